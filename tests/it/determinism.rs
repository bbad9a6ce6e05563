//! Same inputs, same bytes: across job counts, caches, checkout paths, umasks and mtimes.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Builds `ws` with a fresh cache and returns a copy of its output directory.
fn fresh_output(ws: &Ws, extra: &[&str]) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_dir_all(ws.path("imgc-out"));
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    let out = ws
        .cmd(&args)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&ws.path("imgc-out"), copy.path());
    copy
}

#[test]
fn jobs_1_and_jobs_8_give_identical_layouts() {
    let ws = small_ws();
    let a = fresh_output(&ws, &["-j", "1"]);
    let b = fresh_output(&ws, &["-j", "8"]);
    assert_same_tree(a.path(), b.path());
}

#[test]
fn cold_and_warm_cache_give_identical_layouts() {
    let ws = small_ws();
    ws.build(&[]);
    let cold = tempfile::tempdir().unwrap();
    copy_tree(&ws.path("imgc-out"), cold.path());
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    let ev = ws.build(&[]);
    assert!(ev.ran().is_empty());
    assert_same_tree(cold.path(), &ws.path("imgc-out"));
}

#[test]
fn two_checkout_directories_give_identical_layouts() {
    let a = small_ws();
    let b = Ws::copy_of(a.root());
    let oa = fresh_output(&a, &[]);
    let ob = fresh_output(&b, &[]);
    assert_same_tree(oa.path(), ob.path());
}

#[test]
fn another_umask_and_other_mtimes_give_identical_layouts() {
    let a = small_ws();
    let oa = fresh_output(&a, &[]);

    let b = Ws::copy_of(a.root());
    let t = filetime::FileTime::from_unix_time(1_234_567_890, 0);
    for e in walkdir::WalkDir::new(b.root()) {
        let e = e.unwrap();
        let p: PathBuf = e.path().to_path_buf();
        let meta = std::fs::metadata(&p).unwrap();
        // as if checked out under umask 077 (executable bits kept)
        let mode = meta.permissions().mode() & 0o700;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        filetime::set_file_mtime(&p, t).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(b.root())
        .arg("-c")
        .arg(format!(
            "umask 077 && exec {} --cache-dir {} build",
            imgc_bin(),
            cache.path().display()
        ))
        .env("NO_COLOR", "1");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(oa.path(), &b.path("imgc-out"));
}

#[test]
fn source_date_epoch_from_the_environment_changes_the_layers() {
    let ws = small_ws();
    let a = fresh_output(&ws, &[]);
    let cache = tempfile::tempdir().unwrap();
    let out = ws
        .cmd(&["build"])
        .arg("--cache-dir")
        .arg(cache.path())
        .env("SOURCE_DATE_EPOCH", "42")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(tree_bytes(a.path()), tree_bytes(&ws.path("imgc-out")));
}

/// Guards the whole pipeline's bytes: tar headers, compression, JSON. A change
/// here changes every digest users have; it needs a deliberate decision.
#[test]
fn golden_digests_of_the_small_fixture() {
    let ws = small_ws();
    let ev = ws.build(&[]);
    let images = ev.images();
    assert_eq!(
        images["//base:base"],
        "sha256:f84a77562bbd13e16c1eb4c976f80eab75b12e1fa09ea66bb813e6990c440ad6"
    );
    assert_eq!(
        images["//app:app"],
        "sha256:d00882f8a182ed3edb15861e2a87dde25569ab2aa405c74623bf4d1777e0c9a2"
    );
}

/// Golden outputs per recipe version: `(recipe, compression, label, digest)`.
/// The images and imports of the fixture are made of its layers, so from
/// `layer-3` on their recipe is written `image-N/layer-M` (`import-N/layer-M`).
/// When an action's output changes, bump its kind's `RECIPE` (so warm caches
/// stop serving the old bytes) and add lines for the new version; never edit
/// the lines of an old version.
const RECIPE_GOLDEN: &[(&str, &str, &str, &str)] = &[
    (
        "image-1",
        "gzip",
        "//app:app",
        "sha256:8f830eafdfe8cf3e005302d56601f0cf116a7d3eb0fd7a93c53955c89ea60743",
    ),
    (
        "layer-1",
        "gzip",
        "//app:app~layer0",
        "sha256:bcd5b265732e2ed3b6031beb214b5f4de980ea613cab8e9f6b2750e977aa1f74",
    ),
    (
        "layer-1",
        "gzip",
        "//app:code",
        "sha256:f676a41f99a78e4d2250a135dc2bb6b2037e1f52e724eeb0d70ae9b28f304d78",
    ),
    (
        "image-1",
        "gzip",
        "//base:base",
        "sha256:f8ca4f71bc779370695f0d13d0ce2da3381bbac40b9c22614751a2b994c5a164",
    ),
    (
        "layer-1",
        "gzip",
        "//base:files",
        "sha256:a6406e8860f2f0cf41e8808d83f525b2c9a6e0cfe18f43d693982e9ee772fc53",
    ),
    (
        "import-1",
        "gzip",
        "//third_party:archive",
        "sha256:744e82a4f7ea6b2b19840294b1dd0cb832977ce199098fbf5cbd576d9dfe4ffb",
    ),
    (
        "import-1",
        "gzip",
        "//third_party:layout",
        "sha256:f8ca4f71bc779370695f0d13d0ce2da3381bbac40b9c22614751a2b994c5a164",
    ),
    (
        "image-1",
        "zstd",
        "//app:app",
        "sha256:7974c47bad8f9e774d7844318afb71a1977b01e0ecbb566560cf478ebe130a17",
    ),
    (
        "layer-1",
        "zstd",
        "//app:app~layer0",
        "sha256:39d3726d3ba2cf096614a84295535c35e047c3a38988976a7e175c179d463646",
    ),
    (
        "layer-1",
        "zstd",
        "//app:code",
        "sha256:a5bbe5bf0de4ddb32e38b4e3e0510e7a36dee9ae3464529801104820c2464543",
    ),
    (
        "image-1",
        "zstd",
        "//base:base",
        "sha256:f0e5fc31403be6daff3b607ff84763c7949cfdb273f2ef9bae9e67198837306f",
    ),
    (
        "layer-1",
        "zstd",
        "//base:files",
        "sha256:b4af6a505bd7b2dcb3236ab082d9e2542131849232b5945b84ed19c088276367",
    ),
    (
        "import-1",
        "zstd",
        "//third_party:layout",
        "sha256:f0e5fc31403be6daff3b607ff84763c7949cfdb273f2ef9bae9e67198837306f",
    ),
    (
        "image-2",
        "gzip",
        "//app:app",
        "sha256:8f830eafdfe8cf3e005302d56601f0cf116a7d3eb0fd7a93c53955c89ea60743",
    ),
    (
        "layer-2",
        "gzip",
        "//app:app~layer0",
        "sha256:bcd5b265732e2ed3b6031beb214b5f4de980ea613cab8e9f6b2750e977aa1f74",
    ),
    (
        "layer-2",
        "gzip",
        "//app:code",
        "sha256:f676a41f99a78e4d2250a135dc2bb6b2037e1f52e724eeb0d70ae9b28f304d78",
    ),
    (
        "image-2",
        "gzip",
        "//base:base",
        "sha256:f8ca4f71bc779370695f0d13d0ce2da3381bbac40b9c22614751a2b994c5a164",
    ),
    (
        "layer-2",
        "gzip",
        "//base:files",
        "sha256:a6406e8860f2f0cf41e8808d83f525b2c9a6e0cfe18f43d693982e9ee772fc53",
    ),
    (
        "image-2",
        "zstd",
        "//app:app",
        "sha256:7974c47bad8f9e774d7844318afb71a1977b01e0ecbb566560cf478ebe130a17",
    ),
    (
        "layer-2",
        "zstd",
        "//app:app~layer0",
        "sha256:39d3726d3ba2cf096614a84295535c35e047c3a38988976a7e175c179d463646",
    ),
    (
        "layer-2",
        "zstd",
        "//app:code",
        "sha256:a5bbe5bf0de4ddb32e38b4e3e0510e7a36dee9ae3464529801104820c2464543",
    ),
    (
        "image-2",
        "zstd",
        "//base:base",
        "sha256:f0e5fc31403be6daff3b607ff84763c7949cfdb273f2ef9bae9e67198837306f",
    ),
    (
        "layer-2",
        "zstd",
        "//base:files",
        "sha256:b4af6a505bd7b2dcb3236ab082d9e2542131849232b5945b84ed19c088276367",
    ),
    (
        "image-3",
        "gzip",
        "//app:app",
        "sha256:953e30eb09de535af770072e1685d46666d419be1871b5fa7fa551d1f6c47a63",
    ),
    (
        "image-3",
        "gzip",
        "//base:base",
        "sha256:f8ca4f71bc779370695f0d13d0ce2da3381bbac40b9c22614751a2b994c5a164",
    ),
    (
        "image-3",
        "zstd",
        "//app:app",
        "sha256:0217ca44ccba41391a0d53a4f73e59a8d84bd603fed67bf91d27fbbc927a4aa2",
    ),
    (
        "image-3",
        "zstd",
        "//base:base",
        "sha256:f0e5fc31403be6daff3b607ff84763c7949cfdb273f2ef9bae9e67198837306f",
    ),
    (
        "image-3",
        "gzip",
        "//third_party:on-vendor",
        "sha256:41131effd26a58964b37e0b766e44c995ff274d1aa3e3d4b08d31687bd19dd06",
    ),
    (
        "layer-2",
        "gzip",
        "//third_party:on-vendor~layer0",
        "sha256:8d3121bdc1718b13e4c4034c0710e1e049b24289761e0523a9936c0af3f40550",
    ),
    (
        "import-1",
        "gzip",
        "//third_party:vendor",
        "sha256:4d868b9364e88c49c944ee69705e9200286d12db7674d9dd383085e31f06dc04",
    ),
    (
        "image-3",
        "zstd",
        "//third_party:on-vendor",
        "sha256:7b1e0d01d7a94bb4d1f2ead05906eb24a90d1d10b6cbb2ef702c2b84d1107542",
    ),
    (
        "layer-2",
        "zstd",
        "//third_party:on-vendor~layer0",
        "sha256:7654f72f72be3605d75f45fccc9b18f9e5bb6a09dbcc7725553fba503e373009",
    ),
    (
        "import-1",
        "zstd",
        "//third_party:vendor",
        "sha256:4d868b9364e88c49c944ee69705e9200286d12db7674d9dd383085e31f06dc04",
    ),
    (
        "image-3/layer-3",
        "gzip",
        "//app:app",
        "sha256:d00882f8a182ed3edb15861e2a87dde25569ab2aa405c74623bf4d1777e0c9a2",
    ),
    (
        "layer-3",
        "gzip",
        "//app:app~layer0",
        "sha256:fc080749ea97579c15ed4aa26dd6e94038d89fe7c97cc1da96c9423c6f8a6423",
    ),
    (
        "layer-3",
        "gzip",
        "//app:code",
        "sha256:7f33842be58237cf8475c4f9a594ab06eb2f76ca6fb24eb8e94f2f90a1d4a414",
    ),
    (
        "image-3/layer-3",
        "gzip",
        "//base:base",
        "sha256:f84a77562bbd13e16c1eb4c976f80eab75b12e1fa09ea66bb813e6990c440ad6",
    ),
    (
        "layer-3",
        "gzip",
        "//base:files",
        "sha256:1203f95bc487e5381211c9686d3fcc5b5eae759424a165c4c4ca30d038508de8",
    ),
    (
        "import-1/layer-3",
        "gzip",
        "//third_party:archive",
        "sha256:249de3a20cf856b2a2ab4d4743b884537fbfd20d49f2f080c219042ea5fc64bd",
    ),
    (
        "import-1/layer-3",
        "gzip",
        "//third_party:layout",
        "sha256:f84a77562bbd13e16c1eb4c976f80eab75b12e1fa09ea66bb813e6990c440ad6",
    ),
    (
        "image-3/layer-3",
        "gzip",
        "//third_party:on-vendor",
        "sha256:c669a263fd51af06b8c55ec951766f58c291018f55737a6e7ecf81e918068a32",
    ),
    (
        "layer-3",
        "gzip",
        "//third_party:on-vendor~layer0",
        "sha256:04f4e745055a0d255e0ca9fdb0bcfaf149f7bf3ade1ace3ccd6e1fa26b891467",
    ),
    // import-2 checks the platform and keys what it reads: the same bytes as import-1.
    (
        "import-2/layer-3",
        "gzip",
        "//third_party:archive",
        "sha256:249de3a20cf856b2a2ab4d4743b884537fbfd20d49f2f080c219042ea5fc64bd",
    ),
    (
        "import-2/layer-3",
        "gzip",
        "//third_party:layout",
        "sha256:f84a77562bbd13e16c1eb4c976f80eab75b12e1fa09ea66bb813e6990c440ad6",
    ),
    (
        "import-2",
        "gzip",
        "//third_party:vendor",
        "sha256:4d868b9364e88c49c944ee69705e9200286d12db7674d9dd383085e31f06dc04",
    ),
    (
        "import-2",
        "zstd",
        "//third_party:vendor",
        "sha256:4d868b9364e88c49c944ee69705e9200286d12db7674d9dd383085e31f06dc04",
    ),
    // The zstd lines of `layer-3` changed deliberately with the zstd layer format
    // (issue 10): `tar-pax-1+zstd/3` (one streamed frame) became
    // `tar-pax-1+zstd/3/frames-8MiB` (independent frames, each with its content
    // size). That identity is a component of every layer key, so no cache can
    // serve the old bytes for the new format; the layer `RECIPE` was not bumped
    // so that gzip layers (whose bytes did not change) keep their keys. The
    // `import-1` line is an old version's, kept as it was.
    (
        "image-3/layer-3",
        "zstd",
        "//app:app",
        "sha256:6ea9063ce5a58e3a02fd3f3e77955b02b4614da37118ef63dec6d7edbe1d378a",
    ),
    (
        "layer-3",
        "zstd",
        "//app:app~layer0",
        "sha256:479a863c3383170117ce06a7350aa382e3e336e9c5053f40ef777812b28cc896",
    ),
    (
        "layer-3",
        "zstd",
        "//app:code",
        "sha256:b1be61691120809c48af3e487ba53e7e06e65e59cf33248e81a81692b4544077",
    ),
    (
        "image-3/layer-3",
        "zstd",
        "//base:base",
        "sha256:bb77a00ab0f2223ede50fd12288dec0bd8db6710aece656063f37aa5ec16dd8c",
    ),
    (
        "layer-3",
        "zstd",
        "//base:files",
        "sha256:fe934d34eb9e91ba72ad706b6e852a159ffa7689d95d59e5308f0f5fbbde86a9",
    ),
    (
        "import-1/layer-3",
        "zstd",
        "//third_party:layout",
        "sha256:7ae61d34e51fee0636c228a6e9d873ce6f697fc3ed70e9dcced1ae085598b7fc",
    ),
    (
        "import-2/layer-3",
        "zstd",
        "//third_party:layout",
        "sha256:bb77a00ab0f2223ede50fd12288dec0bd8db6710aece656063f37aa5ec16dd8c",
    ),
    (
        "image-3/layer-3",
        "zstd",
        "//third_party:on-vendor",
        "sha256:e1fa56057c23c501341520d922bfdfc64fe966f3918913480bdc2c6ee5a4cc5f",
    ),
    (
        "layer-3",
        "zstd",
        "//third_party:on-vendor~layer0",
        "sha256:6c338eb7eba652f5fe085b4ff0dff0edf5153cf72ab72bcbde354ba1650913d2",
    ),
];

/// Guards the recipe versions: an action kind whose output bytes change without
/// a bump of its `RECIPE` would let a warm cache serve what a fresh build no
/// longer makes.
#[test]
fn recipes_pin_their_output() {
    use imgc::actions::{image, import, layer};
    let mut seen = Vec::new();
    for compression in ["gzip", "zstd"] {
        let ws = small_ws();
        if compression == "zstd" {
            ws.write(
                "imgc.kdl",
                "workspace {\n    source-date-epoch 1700000000\n    compression \"zstd\"\n}\n",
            );
        }
        ws.build(&["//base:base"]);
        copy_tree(
            &ws.layout("base", "base"),
            &ws.path("third_party/base-layout"),
        );
        let mut imports = "import \"layout\" {\n    oci-layout \"base-layout\"\n}\n".to_string();
        // Docker archives hold no zstd layers.
        if compression == "gzip" {
            skopeo_docker_archive(&ws.layout("base", "base"), &ws.path("third_party/base.tar"));
            imports.push_str("import \"archive\" {\n    docker-archive \"base.tar\"\n}\n");
        }
        // A Docker-style base (Healthcheck, Shell, OnBuild, unknown fields) and an
        // image on it with annotations, labels and env: JSON-level inheritance and
        // manifest annotations are part of the image recipe.
        copy_tree(
            &spec_examples().join("third_party/vendor-base"),
            &ws.path("third_party/vendor-base"),
        );
        imports.push_str(
            "import \"vendor\" {\n    oci-layout \"vendor-base\"\n}\n\
             image \"on-vendor\" {\n    from \":vendor\"\n    layer {\n        \
             text \"/etc/motd\" \"hi\\n\"\n    }\n    env PATH=\"/bin\" MODE=\"x\"\n    \
             label \"org.example.team\" \"core\"\n    \
             annotation \"org.example.release\" \"1\"\n    expose \"8080\"\n    \
             volume \"/data\"\n}\n",
        );
        ws.write("third_party/BUILD.kdl", &imports);
        for (label, (kind, digest)) in ws.build(&[]).outputs_with_kind() {
            // The images and imports here are made of layers imgc built (the
            // vendor base is not: its recipe is the import's alone), so their
            // bytes also change with the layer recipe.
            let recipe = match kind.as_str() {
                "import" if label == "//third_party:vendor" => import::RECIPE.to_string(),
                "import" => format!("{}/{}", import::RECIPE, layer::RECIPE),
                "image" => format!("{}/{}", image::RECIPE, layer::RECIPE),
                _ => layer::RECIPE.to_string(),
            };
            seen.push((recipe, compression, label, digest));
        }
    }
    let mut missing = Vec::new();
    for (recipe, compression, label, digest) in &seen {
        match RECIPE_GOLDEN
            .iter()
            .find(|(r, c, l, _)| r == recipe && c == compression && l == label)
        {
            Some((_, _, _, golden)) => assert_eq!(
                golden, digest,
                "the output of `{label}` ({compression}) changed under recipe `{recipe}`: \
                 bump that kind's `RECIPE` in src/actions/ and add golden lines for the new \
                 version (never edit an old version's lines)"
            ),
            None => missing.push(format!(
                "    (\"{recipe}\", \"{compression}\", \"{label}\", \"{digest}\"),"
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "no golden output for these recipes; add to RECIPE_GOLDEN:\n{}",
        missing.join("\n")
    );
}

/// Guards the zstd layer format's independence from threads: several layers
/// of several 8 MiB frames each, written with one job and with two (two layers
/// then share the compression pool and its buffer budget), give the same bytes.
#[test]
fn zstd_multi_frame_layers_are_the_same_with_jobs_1_and_2() {
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n    compression \"zstd\"\n}\n",
        ),
        (
            "a/BUILD.kdl",
            "image \"a\" {\n    from \"scratch\"\n    layer {\n        copy \"x.bin\" to=\"/x.bin\"\n    }\n}\n",
        ),
        (
            "b/BUILD.kdl",
            "image \"b\" {\n    from \"scratch\"\n    layer {\n        copy \"y.bin\" to=\"/y.bin\"\n    }\n    \
             layer {\n        copy \"z.bin\" to=\"/z.bin\"\n    }\n}\n",
        ),
    ]);
    ws.write_bytes("a/x.bin", &semi_random(17 << 20, 0x2545_f491_4f6c_dd1d));
    ws.write_bytes("b/y.bin", &semi_random(9 << 20, 0x9e37_79b9_7f4a_7c15));
    ws.write_bytes("b/z.bin", &semi_random(25 << 20, 0x0123_4567_89ab_cdef));
    let one = fresh_output(&ws, &["-j", "1"]);
    let two = fresh_output(&ws, &["-j", "2"]);
    assert_same_tree(one.path(), two.path());
    for image in ["a/a", "b/b"] {
        imgc::oci::check_layout(&one.path().join(image)).unwrap();
    }
}
