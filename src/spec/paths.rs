//! Path and value checks of the spec language (pure string functions).
//!
//! Source paths (`copy`, `oci-layout`, `exclude`...) are relative to the package
//! directory and may not leave the workspace; in-image paths (`to`, `text`, `dir`,
//! `symlink`) are absolute and free of `..`.

use crate::diag::Code;

/// Why a path or value was rejected: the code, a lowercase message and a help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub code: Code,
    pub message: String,
    pub help: String,
}

fn reject(code: Code, message: String, help: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message,
        help: help.into(),
    }
}

/// Normalizes a source path written in the BUILD.kdl of `package`: drops `.` and
/// empty components, resolves inner `..`, and keeps leading `..` components as long
/// as they stay inside the workspace. Returns `.` for the package directory itself.
pub(crate) fn normalize_source(what: &str, package: &str, s: &str) -> Result<String, Rejection> {
    if s.is_empty() {
        return Err(reject(
            Code::InvalidValue,
            format!("{what} is empty"),
            "write a path relative to the package directory, like \"bin/server\"",
        ));
    }
    if s.starts_with('/') || s.starts_with('\\') || has_drive_prefix(s) {
        return Err(reject(
            Code::PathEscapes,
            format!("{what} `{s}` is absolute"),
            package_help(package),
        ));
    }
    let depth = package.split('/').filter(|c| !c.is_empty()).count();
    let mut ups = 0usize;
    let mut stack: Vec<&str> = Vec::new();
    for comp in s.split('/') {
        match comp {
            "" | "." => {}
            ".." if stack.pop().is_some() => {}
            ".." => {
                ups += 1;
                if ups > depth {
                    return Err(reject(
                        Code::PathEscapes,
                        format!("{what} `{s}` leaves the workspace"),
                        package_help(package),
                    ));
                }
            }
            c => stack.push(c),
        }
    }
    let mut parts: Vec<&str> = vec![".."; ups];
    parts.extend(stack);
    if parts.is_empty() {
        return Ok(".".to_string());
    }
    Ok(parts.join("/"))
}

fn has_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn package_help(package: &str) -> String {
    if package.is_empty() {
        "source paths are relative to the workspace root and must stay inside it".to_string()
    } else {
        format!(
            "source paths are relative to the package directory `{package}` and must stay inside the workspace"
        )
    }
}

/// Checks a path inside the image: absolute, without `..` components.
pub(crate) fn check_image_path(what: &str, s: &str) -> Result<(), Rejection> {
    if !s.starts_with('/') {
        return Err(reject(
            Code::InvalidValue,
            format!("{what} must be an absolute path in the image, got \"{s}\""),
            format!(
                "start it with `/`, like \"/{}\"",
                s.trim_start_matches("./")
            ),
        ));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(reject(
            Code::InvalidValue,
            format!("{what} may not contain `..`, got \"{s}\""),
            "write the path inside the image without `..`",
        ));
    }
    Ok(())
}

/// Normalizes an `expose` value: `"8080"` → `"8080/tcp"`; protocols tcp, udp, sctp.
pub(crate) fn normalize_expose(s: &str) -> Result<String, Rejection> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Err(reject(
            Code::InvalidValue,
            format!("`expose` needs a port number from 1 to 65535, got \"{s}\""),
            "write \"PORT\" or \"PORT/PROTO\", like \"8080\" or \"53/udp\"",
        ));
    }
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(reject(
            Code::InvalidValue,
            format!("`expose` protocol must be `tcp`, `udp` or `sctp`, got \"{proto}\""),
            "write \"PORT\" or \"PORT/PROTO\", like \"8080\" or \"53/udp\"",
        ));
    }
    Ok(format!("{port}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_normalize_and_stay_inside() {
        let n = |p, s| normalize_source("source path", p, s).map_err(|r| r.code);
        assert_eq!(n("a/b", "./x//y/./z"), Ok("x/y/z".into()));
        assert_eq!(n("a/b", "x/../y"), Ok("y".into()));
        assert_eq!(n("a/b", "../../c"), Ok("../../c".into()));
        assert_eq!(n("a/b", "."), Ok(".".into()));
        assert_eq!(n("a/b", "../../../c"), Err(Code::PathEscapes));
        assert_eq!(n("", "../c"), Err(Code::PathEscapes));
        assert_eq!(n("a", "/etc/passwd"), Err(Code::PathEscapes));
        assert_eq!(n("a", "x/../../b"), Ok("../b".into()));
        assert_eq!(n("a", ""), Err(Code::InvalidValue));
    }

    #[test]
    fn image_paths() {
        assert!(check_image_path("`to`", "/app/").is_ok());
        assert!(check_image_path("`to`", "app").is_err());
        assert!(check_image_path("`to`", "/app/../etc").is_err());
    }

    #[test]
    fn expose_values() {
        assert_eq!(normalize_expose("9090"), Ok("9090/tcp".into()));
        assert_eq!(normalize_expose("53/udp"), Ok("53/udp".into()));
        assert!(normalize_expose("80/xyz").is_err());
        assert!(normalize_expose("abc").is_err());
        assert!(normalize_expose("0").is_err());
        assert!(normalize_expose("70000").is_err());
    }
}
