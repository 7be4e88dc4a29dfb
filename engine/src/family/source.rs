//! Where a model's parts come from: configs and tokenizers from a diffusers-layout folder (the
//! model's own, `--model-config DIR`, or the family's bundled one), and weights either from
//! that folder's component files or from views of one single-file checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::model_files;
use crate::schedulers::{PredictionType, SchedulerConfig};
use crate::weights::WeightSource;
use crate::{Error, Result};

/// The parts of one model.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// Configs and tokenizers, in the diffusers layout.
    pub config_dir: PathBuf,
    /// Weights by component when they come from a single file; `None`: each component's file
    /// in `config_dir`.
    pub components: Option<HashMap<String, WeightSource>>,
    /// What messages name and [`super::Model::source`] holds: the folder or the file.
    pub origin: PathBuf,
    /// The prediction type replacing the scheduler config's.
    pub prediction: Option<PredictionType>,
    /// VAE weights replacing the model's (`--vae FILE`).
    pub vae: Option<WeightSource>,
}

impl ModelSource {
    /// A diffusers folder.
    pub fn folder(dir: &Path) -> Self {
        Self {
            config_dir: dir.to_path_buf(),
            components: None,
            origin: dir.to_path_buf(),
            prediction: None,
            vae: None,
        }
    }

    /// The weights of `component` (its file in the folder is `<component>/<stem>.safetensors`)
    /// and the file they are read from.
    pub fn weights(&self, component: &str, stem: &str) -> Result<(PathBuf, WeightSource)> {
        if component == "vae" {
            if let Some(vae) = &self.vae {
                return Ok((vae.file().path().to_path_buf(), vae.clone()));
            }
        }
        match &self.components {
            None => {
                let file = model_files::weights(&self.config_dir, component, stem)?;
                let source = WeightSource::open(&file)?;
                Ok((file, source))
            }
            Some(map) => match map.get(component) {
                Some(source) => Ok((self.origin.clone(), source.clone())),
                None => Err(Error::Config {
                    path: self.origin.clone(),
                    message: format!(
                        "the checkpoint holds no `{component}` weights; use a checkpoint with \
                         them{}",
                        if component == "vae" {
                            " or pass --vae FILE"
                        } else {
                            ""
                        }
                    ),
                }),
            },
        }
    }

    /// The config file `file` of `component`.
    pub fn config(&self, component: &str, file: &str) -> Result<PathBuf> {
        Ok(model_files::config(&self.config_dir, component, file)?)
    }

    /// The tokenizer folder `name`.
    pub fn tokenizer_dir(&self, name: &str) -> PathBuf {
        self.config_dir.join(name)
    }

    /// The scheduler config, with the prediction type this source fixes.
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        let mut config =
            SchedulerConfig::from_file(&self.config("scheduler", "scheduler_config.json")?)?;
        if let Some(prediction) = self.prediction {
            config.prediction_type = prediction;
        }
        Ok(config)
    }
}
