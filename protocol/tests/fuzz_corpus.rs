//! Replays the committed fuzz corpus (`fuzz/corpus/decode`, grown by `cargo fuzz run decode`
//! and minimized) through the same decoders the fuzz target drives.

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        sluice_protocol::fuzzing::check_decoders(&data);
        inputs += 1;
    }
    assert!(inputs >= 20, "corpus has only {inputs} inputs");
}
