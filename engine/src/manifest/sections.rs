//! The top-level tables a manifest file may hold. Each is read by the module that owns it; the
//! folder reader refuses any other top-level key, naming every table listed here.

/// A top-level table of the manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// The key, e.g. `pipeline`.
    pub key: &'static str,
    /// Whether it is an array of tables (`[[pipeline]]`) rather than one table (`[pack]`).
    pub array: bool,
}

impl Section {
    /// One `[key]` table per file.
    pub const fn table(key: &'static str) -> Self {
        Self { key, array: false }
    }

    /// Any number of `[[key]]` tables per file.
    pub const fn array(key: &'static str) -> Self {
        Self { key, array: true }
    }

    /// How the table is written: `[pack]` or `[[pipeline]]`.
    pub fn header(&self) -> String {
        if self.array {
            format!("[[{}]]", self.key)
        } else {
            format!("[{}]", self.key)
        }
    }
}

/// Every known top-level table, in the order error messages list them. A new owner (model
/// families, embeddings) adds its line here.
pub const SECTIONS: &[Section] = &[
    Section::table("pack"),      // read by manifest/pack.rs
    Section::array("pipeline"),  // read by manifest/pipeline.rs
    Section::array("lora"),      // read by lora/manifest.rs
    Section::array("lora_set"),  // read by lora/manifest.rs
    Section::array("plugin"),    // read by plugins/manifest.rs
    Section::array("embedding"), // read by manifest/embedding.rs
    Section::table("family"),    // read by family/manifest.rs
];

/// The section called `key`, if it is known.
pub fn find(key: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| s.key == key)
}

/// Every section's header for messages: `[pack], [[pipeline]], ... and [[plugin]]`.
pub fn headers() -> String {
    let headers: Vec<String> = SECTIONS.iter().map(Section::header).collect();
    match headers.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => headers.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_every_section() {
        assert_eq!(
            headers(),
            "[pack], [[pipeline]], [[lora]], [[lora_set]], [[plugin]], [[embedding]] and [family]"
        );
        assert_eq!(
            find("lora_set").map(Section::header),
            Some("[[lora_set]]".into())
        );
        assert!(find("widget").is_none());
    }
}
