//! Unit tests of the CLIP tokenizer.

use super::*;

fn fixture_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(model)
        .join("tokenizer")
}

/// A tokenizer folder with the given files, in a fresh temporary directory.
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write file");
    }
    dir
}

const VOCAB: &str = r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}"#;
const MERGES: &str = "#version: 0.2\na b</w>\n";

#[test]
fn missing_folder_names_it() {
    let error = ClipTokenizer::from_dir(Path::new("/no/such/tokenizer")).unwrap_err();
    assert!(error.to_string().contains("/no/such/tokenizer"), "{error}");
}

#[test]
fn missing_vocab_names_the_expected_path() {
    let dir = folder(&[("merges.txt", MERGES)]);
    let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    let expected = dir.path().join("vocab.json");
    assert!(
        matches!(&error, TokenizerError::MissingFile { path } if *path == expected),
        "{error}"
    );
    assert!(
        error.to_string().contains(&expected.display().to_string()),
        "{error}"
    );
}

#[test]
fn missing_merges_names_the_expected_path() {
    let dir = folder(&[("vocab.json", VOCAB)]);
    let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(error.to_string().contains("merges.txt"), "{error}");
}

#[test]
fn malformed_vocab_names_the_file_and_line() {
    let dir = folder(&[
        ("vocab.json", "{\n\"a\": 0,\n\"b\": oops}"),
        ("merges.txt", MERGES),
    ]);
    let error = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("vocab.json") && message.contains("line 3"),
        "{message}"
    );
}

#[test]
fn malformed_merges_names_the_line() {
    let dir = folder(&[
        ("vocab.json", VOCAB),
        ("merges.txt", "#version: 0.2\na b</w>\nabc\n"),
    ]);
    let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("merges.txt") && message.contains("line 3"),
        "{message}"
    );
}

#[test]
fn unknown_pad_token_names_the_file_and_field() {
    let config = r#"{"pad_token": {"content": "<pad>"}}"#;
    let dir = folder(&[
        ("vocab.json", VOCAB),
        ("merges.txt", MERGES),
        ("tokenizer_config.json", config),
    ]);
    let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("tokenizer_config.json") && message.contains("pad_token"),
        "{message}"
    );
    assert!(message.contains("<pad>"), "{message}");
}

#[test]
fn bad_max_length_names_the_field() {
    let config = r#"{"model_max_length": "long"}"#;
    let dir = folder(&[
        ("vocab.json", VOCAB),
        ("merges.txt", MERGES),
        ("tokenizer_config.json", config),
    ]);
    let message = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("model_max_length") && message.contains("long"),
        "{message}"
    );
}

#[test]
fn settings_defaults_and_overrides() {
    let dir = folder(&[("vocab.json", VOCAB), ("merges.txt", MERGES)]);
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
    assert_eq!((tokenizer.max_length(), tokenizer.pad_id()), (77, 6));

    let config = r#"{"model_max_length": 1e30, "pad_token": "b"}"#;
    let map = r#"{"pad_token": {"content": "a", "lstrip": false}}"#;
    let files = [
        ("vocab.json", VOCAB),
        ("merges.txt", MERGES),
        ("tokenizer_config.json", config),
    ];
    let dir = folder(&files);
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
    assert_eq!((tokenizer.max_length(), tokenizer.pad_id()), (77, 1));
    std::fs::write(dir.path().join("special_tokens_map.json"), map).expect("write");
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
    assert_eq!(tokenizer.pad_id(), 0);
    // A config listing its added tokens is not overridden by the map.
    let config = r#"{"pad_token": "b", "added_tokens_decoder": {}}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).expect("write");
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
    assert_eq!(tokenizer.pad_id(), 1);
}

#[test]
fn encodes_pads_and_truncates() {
    let config = r#"{"model_max_length": 5}"#;
    let dir = folder(&[
        ("vocab.json", VOCAB),
        ("merges.txt", MERGES),
        ("tokenizer_config.json", config),
    ]);
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("tokenizer");
    let short = tokenizer.encode(" AB ").expect("encode");
    assert_eq!(
        short,
        Encoding {
            ids: vec![5, 4, 6, 6, 6],
            truncated: None
        }
    );
    let long = tokenizer.encode("ab a b ab").expect("encode");
    assert_eq!(long.ids, vec![5, 4, 2, 3, 6]);
    assert_eq!(long.truncated.as_deref(), Some("ab"));
}

#[test]
fn splits_on_special_tokens_first() {
    let specials = [("<|endoftext|>".to_string(), 7), ("!".to_string(), 0)];
    let pieces = split_on_specials("hi!<|endoftext|>é", &specials);
    assert_eq!(
        pieces,
        [
            Piece::Text("hi"),
            Piece::Special(0),
            Piece::Special(7),
            Piece::Text("é")
        ]
    );
}

#[test]
fn fixes_text_like_ftfy() {
    let cases = [
        (
            "salt &amp; pepper &lt;3 &quot;hi&quot; &#x41;&#66;",
            "salt & pepper <3 \"hi\" AB",
        ),
        ("<b> &amp;\n&amp;", "<b> &amp;\n&amp;"),
        ("cafÃ© naÃ¯ve Â© â€œqâ€\u{9d}", "café naïve © \"q\""),
        ("ﬁne ＡＢＣ １２ ｶ “q” it’s", "fine ABC 12 カ \"q\" it's"),
        ("e\u{301} a\r\nb\u{1b}[31mred\u{1b}[0m\u{7}", "é a\nbred"),
        ("x\u{85}y \u{93}q\u{94}", "x…y \"q\""),
        ("voilÃ le Ã la", "voilà le à la"),
        (
            "&eacute; &EACUTE; &SZLIG; &nosuch; &#xd800; &#1;",
            "é É SS &nosuch; \u{fffd} ",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(ftfy::fix_text(input), expected, "fix_text({input:?})");
    }
    assert_eq!(clean("  Tabs\tAND\n  Spaces  "), "tabs and spaces");
}

/// A `tokenizer.json` (here saved from the vocab.json build) gives the same ids.
#[test]
fn loads_tokenizer_json() {
    let source = fixture_dir("tiny-sd2");
    let built = ClipTokenizer::from_dir(&source).expect("tokenizer");
    let dir = tempfile::tempdir().expect("temp dir");
    built
        .inner
        .save(dir.path().join("tokenizer.json"), false)
        .expect("save");
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(source.join(name), dir.path().join(name)).expect("copy");
    }
    let loaded = ClipTokenizer::from_dir(dir.path()).expect("tokenizer.json");
    for prompt in [
        "a red fox!",
        "Tom's ＡＢＣ café, 1024x768 <|endoftext|>",
        "🦊🔥 fox",
    ] {
        assert_eq!(
            loaded.encode(prompt).expect("encode"),
            built.encode(prompt).expect("encode")
        );
    }
}
