//! Fuzzes the spec parser: any UTF-8 text, as `imgc.kdl` and as a BUILD.kdl, must
//! produce a model and diagnostics without panicking, and every diagnostic must
//! render (short form and miette report).
#![no_main]

use imgc::diag::Sources;
use imgc::spec::{parse_build_file, parse_workspace_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = Sources::default();
    let file = sources.add("services/api/BUILD.kdl", text);
    let (_, ws) = parse_workspace_file(file, text);
    let (_, build) = parse_build_file(file, "services/api", text);
    for d in ws.iter().chain(&build) {
        let _ = d.short(&sources);
        let report = d.to_report(&sources);
        let _ = format!("{report:?}");
    }
});
