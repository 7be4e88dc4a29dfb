use super::*;
use crate::server::jobs::{Origin, Status, Summary};
use record::{StoredImage, StoredMask, VERSION};

fn accepted(id: &str, seq: u64, image: bool) -> Accepted {
    Accepted {
        version: VERSION,
        id: id.into(),
        seq,
        origin: Origin::Native,
        created_at_ms: 1_000 + seq,
        summary: Summary {
            pipeline: "tiny".into(),
            parameters: serde_json::json!({"steps": 2}),
            image_parameters: vec![serde_json::json!({"seed": 1})],
        },
        request: StoredRequest {
            prompt: format!("job {id}"),
            image: image.then_some(StoredImage {
                strength: Some(0.5),
                resize: None,
                sample_posterior: false,
                mask: Some(StoredMask {
                    blur: None,
                    only_masked: None,
                    content: None,
                }),
            }),
            ..Default::default()
        },
    }
}

fn finished(images: usize) -> Finished {
    Finished {
        version: VERSION,
        status: Status::Completed,
        started_at_ms: Some(5),
        finished_at_ms: 6,
        error: None,
        warnings: vec![],
        infotexts: vec!["text".into(); images],
        images,
    }
}

#[test]
fn jobs_come_back_in_acceptance_order_with_inputs_and_images() {
    let root = tempfile::tempdir().unwrap();
    let (dir, jobs, problems) = DataDir::open(root.path()).unwrap();
    assert!(jobs.is_empty() && problems.is_empty());
    let picture = RgbImage {
        width: 3,
        height: 2,
        data: (0..18).collect(),
    };
    let mask = Mask {
        width: 3,
        height: 2,
        data: vec![0.0, 1.0, 128.0 / 255.0, 1.0, 0.0, 1.0],
    };
    for (n, id) in ["c", "a", "b"].into_iter().enumerate() {
        assert_eq!(dir.next_seq(), n as u64);
        let image = id == "a";
        let (p, m) = if image {
            (Some(&picture), Some(&mask))
        } else {
            (None, None)
        };
        dir.accept(&accepted(id, n as u64, image), p, m).unwrap();
    }
    dir.finish("c", &finished(2), &[vec![1, 2], vec![3]])
        .unwrap();
    drop(dir);

    let (dir, jobs, problems) = DataDir::open(root.path()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let ids: Vec<&str> = jobs.iter().map(|s| s.accepted.id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "b"]);
    assert_eq!(dir.next_seq(), 3);
    assert_eq!(jobs[0].finished, Some(Ok(finished(2))));
    assert_eq!(dir.images("c", 2).unwrap(), vec![vec![1, 2], vec![3]]);
    assert!(jobs[1].finished.is_none());
    assert_eq!(jobs[1].accepted, accepted("a", 1, true));
    let (p, m) = dir.inputs(&jobs[1].accepted).unwrap();
    assert_eq!(p.unwrap(), picture);
    assert_eq!(m.unwrap(), mask);
    assert_eq!(dir.inputs(&jobs[2].accepted).unwrap(), (None, None));

    dir.forget("c");
    let left: Vec<String> = fs::read_dir(root.path().join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("c."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn damaged_and_partial_files_are_reported_and_skipped() {
    let root = tempfile::tempdir().unwrap();
    let (dir, ..) = DataDir::open(root.path()).unwrap();
    dir.accept(&accepted("good", 0, false), None, None).unwrap();
    dir.accept(&accepted("done", 1, false), None, None).unwrap();
    let jobs = root.path().join("jobs");
    // A record cut off half-way, a leftover temporary file, a done record that is not JSON,
    // a record of another version, images of a job that has no record.
    let text = fs::read_to_string(jobs.join("good.job.json")).unwrap();
    fs::write(jobs.join("cut.job.json"), &text[..text.len() / 2]).unwrap();
    fs::write(jobs.join("x.job.json.tmp"), "{").unwrap();
    fs::write(jobs.join("done.done.json"), "garbage").unwrap();
    fs::write(
        jobs.join("old.job.json"),
        text.replace("\"version\": 1", "\"version\": 99"),
    )
    .unwrap();
    fs::write(jobs.join("orphan.image-0.png"), "png").unwrap();
    drop(dir);

    let (dir, found, problems) = DataDir::open(root.path()).unwrap();
    drop(dir);
    let ids: Vec<&str> = found.iter().map(|s| s.accepted.id.as_str()).collect();
    assert_eq!(ids, ["good", "done"]);
    assert!(found[0].finished.is_none());
    let reason = found[1].finished.clone().unwrap().unwrap_err();
    assert!(
        reason.contains("done.done.json") && reason.contains("not JSON"),
        "{reason}"
    );
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages
        .iter()
        .any(|m| m.contains("cut.job.json") && m.contains("not JSON")));
    assert!(messages
        .iter()
        .any(|m| m.contains("old.job.json") && m.contains("version")));
    for gone in ["x.job.json.tmp", "orphan.image-0.png", "cut.job.json"] {
        assert!(!jobs.join(gone).exists(), "{gone} should be gone");
    }
    assert!(jobs.join("cut.job.json.damaged").exists());
    // Set aside, they are not reported again.
    let (_dir, found, problems) = DataDir::open(root.path()).unwrap();
    assert_eq!(found.len(), 2);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn two_servers_never_share_a_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let (first, ..) = DataDir::open(root.path()).unwrap();
    let e = DataDir::open(root.path()).unwrap_err().to_string();
    assert!(e.contains("another beeswax serve"), "{e}");
    drop(first);
    assert!(
        DataDir::open(root.path()).is_ok(),
        "free again once the first is gone"
    );
}
