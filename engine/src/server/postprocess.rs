//! Post-processors: named image-to-image functions a pipeline runs on every image it makes,
//! in the order its `post_processors` list names them. The host registers them at start-up
//! (the plugin host adds its image processors here); manifests naming one that is not
//! registered are refused when the service starts.

use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use crate::image_out::RgbImage;

/// A post-processor: takes an image, returns the processed image or what went wrong.
pub type PostProcessFn = dyn Fn(RgbImage) -> Result<RgbImage, String> + Send + Sync;

/// Registered post-processors, by name, in registration order.
type Entries = Vec<(String, Arc<PostProcessFn>)>;

static REGISTRY: LazyLock<RwLock<Entries>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Registers post-processor `name`; a later registration under the same name replaces it.
pub fn register(
    name: &str,
    f: impl Fn(RgbImage) -> Result<RgbImage, String> + Send + Sync + 'static,
) {
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    registry.retain(|(n, _)| n != name);
    registry.push((name.to_string(), Arc::new(f)));
}

/// The post-processor called `name`, if registered.
pub fn find(name: &str) -> Option<Arc<PostProcessFn>> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, f)| f.clone())
}

/// The registered names, in registration order.
pub fn names() -> Vec<String> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(n, _)| n.clone())
        .collect()
}
