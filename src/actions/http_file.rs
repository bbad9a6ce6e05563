//! The http-file action: one file fetched over HTTP(S), pinned by its sha256.
//!
//! `http-file "jq" url="https://..." sha256="..."` names bytes by their digest
//! and says where to find them. The key is the recipe version, the sha256 and
//! the size when one is given, nothing else: the URL says where the bytes come
//! from, not what they are, so moving a download to a mirror rebuilds nothing
//! (as for a `registry` import pinned by digest). Keying needs no IO at all, so
//! it runs on the coordinator, and `imgc explain` or a dry run never touch the
//! network.
//!
//! # Running
//!
//! The file is streamed straight into the CAS ([`Cas::writer`]) and hashed on
//! the way; it is published only if it hashes to the pinned sha256 and, when a
//! `size` is pinned, has exactly that many bytes. A body longer than the pinned
//! size (or than [`MAX_UNSIZED`] without one) is cut off and refused as it
//! arrives, so a server cannot fill the disk. A wrong digest is an error
//! ([`Code::DownloadMismatch`]) at the spec's `sha256`, naming the URL, with the
//! expected and the actual sha256 and a help line ready to paste; nothing is
//! published (the temp file goes with the dropped writer) and nothing is cached.
//!
//! Before any request, the store is asked: a blob already there under the
//! pinned digest (another target pins the same bytes; the action cache lost
//! its row) is verified and used, without the network. Once a file is stored,
//! builds are offline: the action's cache hit needs only the blob, and the
//! remote cache serves it like any other output.
//!
//! # Transport
//!
//! [`crate::fetch`]: one agent, TLS against the system's roots, proxies, redirects,
//! retries of what is worth retrying; any other answer but 2xx fails at once
//! ([`Code::DownloadFailed`]), naming the URL and the status.
//!
//! # What it deliberately does not do
//!
//! - No credentials: a spec is committed, so the parser refuses a URL with
//!   `user:password@`, and no header is added. A private file belongs in the
//!   workspace or behind a URL that needs none (it is verified anyway).
//! - No unpacking: the output is the file as downloaded. A tarball goes into a
//!   layer as one file; unpacking it is another target kind's business.
//! - No trust in the server's `Content-Length` or checksum headers: only the
//!   pinned digest decides.

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Components, FileOut, Output};
use crate::diag::{Code, Diag};
use crate::fetch::{Failure, MAX_UNSIZED, download, stored};
use crate::hash::Digest;
use crate::spec::model::{HttpFileSpec, TargetKind};
use petgraph::graph::NodeIndex;

/// The http-file recipe version: bump it whenever the output could change for
/// the same key components.
pub const RECIPE: &str = "http-file-1";

/// Key of http-file `n`: recipe, sha256 and (when given) size. No IO.
pub fn key(spec: &HttpFileSpec) -> Keyed {
    let mut c = Components::new("http-file");
    c.set("recipe", RECIPE);
    c.set("sha256", spec.sha256.value.to_string());
    if let Some(size) = &spec.size {
        c.set("size", size.value.to_string());
    }
    Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::HttpFile,
        learnt: Vec::new(),
        touched: Vec::new(),
    }
}

/// Fetches http-file `n` into the CAS (or finds it there), verified.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let TargetKind::HttpFile(spec) = &node.target.kind else {
        return Err(ActionError::Message(format!(
            "`{}` is not an http-file",
            node.label
        )));
    };
    let context = || format!("http-file `{}`", node.label);
    let expected = spec.sha256.value;
    let pinned_size = spec.size.as_ref().map(|s| s.value);
    if let Some(size) =
        stored(ctx.cas, &expected, pinned_size).map_err(|e| ActionError::failed(context(), &e))?
    {
        return Ok(Output::File(FileOut {
            digest: expected,
            size,
        }));
    }
    let url = spec.url.value.as_str();
    match download(url, pinned_size.unwrap_or(MAX_UNSIZED), ctx.cas) {
        Ok(w) => {
            let got = w.bytes_written();
            let actual = w.digest_so_far();
            if let Some(want) = pinned_size.filter(|s| *s != got) {
                return Err(mismatch_size(node, spec, url, want, got, &actual));
            }
            if actual != expected {
                return Err(mismatch(node, spec, url, &actual, got));
            }
            let (digest, size) = w
                .commit_expecting(&expected)
                .map_err(|e| ActionError::failed(context(), &e))?;
            Ok(Output::File(FileOut { digest, size }))
        }
        Err(Failure::Store(e)) => Err(ActionError::failed(context(), &e)),
        Err(Failure::TooLong { limit }) => Err(match pinned_size {
            Some(want) => ActionError::Spec(
                Diag::new(
                    Code::DownloadMismatch,
                    format!(
                        "{}: `{url}` sent more than the pinned {want} bytes",
                        context()
                    ),
                )
                .at(node.file, spec.size.as_ref().map_or(spec.url.span, |s| s.span))
                .label("pinned size")
                .help("the file at this URL is not the one pinned: check the URL, the size and the sha256"),
            ),
            None => ActionError::Spec(
                Diag::new(
                    Code::DownloadFailed,
                    format!(
                        "{}: `{url}` sent more than {limit} bytes, the most imgc reads without a pinned `size`",
                        context()
                    ),
                )
                .at(node.file, spec.url.span)
                .label("too large")
                .help("pin the file's size in bytes with `size=N`"),
            ),
        }),
        Err(Failure::Http { why, attempts }) => {
            let tries = if attempts > 1 {
                format!(" (after {attempts} attempts)")
            } else {
                String::new()
            };
            Err(ActionError::Spec(
                Diag::new(
                    Code::DownloadFailed,
                    format!("{}: cannot download `{url}`: {why}{tries}", context()),
                )
                .at(node.file, spec.url.span)
                .label("downloaded from here")
                .help("check the URL, and that the server is reachable from here"),
            ))
        }
    }
}

fn mismatch(
    node: &crate::graph::Node,
    spec: &HttpFileSpec,
    url: &str,
    actual: &Digest,
    size: u64,
) -> ActionError {
    ActionError::Spec(
        Diag::new(
            Code::DownloadMismatch,
            format!(
                "http-file `{}`: `{url}` does not have the pinned sha256: expected {}, got {} ({size} bytes); nothing was stored",
                node.label,
                spec.sha256.value.hex(),
                actual.hex()
            ),
        )
        .at(node.file, spec.sha256.span)
        .label("pinned sha256")
        .help(format!(
            "if the file at this URL is the one you want, write sha256=\"{}\"",
            actual.hex()
        )),
    )
}

fn mismatch_size(
    node: &crate::graph::Node,
    spec: &HttpFileSpec,
    url: &str,
    want: u64,
    got: u64,
    actual: &Digest,
) -> ActionError {
    let span = spec.size.as_ref().map_or(spec.sha256.span, |s| s.span);
    ActionError::Spec(
        Diag::new(
            Code::DownloadMismatch,
            format!(
                "http-file `{}`: `{url}` sent {got} bytes, not the pinned {want} (its sha256 is {}); nothing was stored",
                node.label,
                actual.hex()
            ),
        )
        .at(node.file, span)
        .label("pinned size")
        .help(format!(
            "if the file at this URL is the one you want, write size={got} sha256=\"{}\"",
            actual.hex()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::Spanned;

    fn spec(url: &str, sha: u8, size: Option<u64>, executable: bool) -> HttpFileSpec {
        HttpFileSpec {
            url: Spanned::new(url.into(), (0, 1).into()),
            sha256: Spanned::new(Digest([sha; 32]), (2, 1).into()),
            size: size.map(|s| Spanned::new(s, (4, 1).into())),
            executable,
        }
    }

    #[test]
    fn the_key_holds_the_digest_and_size_not_the_url() {
        let a = key(&spec("https://a.example/x", 1, None, false));
        let mirror = key(&spec("http://mirror.example/y", 1, None, false));
        assert_eq!(
            a.key, mirror.key,
            "a mirror of the same bytes is the same key"
        );
        // `executable` is how a layer uses the file, not the file itself.
        let exec = key(&spec("https://a.example/x", 1, None, true));
        assert_eq!(a.key, exec.key);
        let other = key(&spec("https://a.example/x", 2, None, false));
        assert_ne!(a.key, other.key);
        let sized = key(&spec("https://a.example/x", 1, Some(10), false));
        assert_ne!(a.key, sized.key);
        assert_eq!(sized.components.get("size"), Some("10"));
        assert_eq!(a.components.get("recipe"), Some(RECIPE));
        assert_eq!(a.components.get("kind"), Some("http-file"));
    }
}
