//! `imgc completions bash|zsh|fish` and `imgc man`, checked against the clap
//! definitions themselves (every subcommand, every flag), with the shells and
//! man's own tools: syntax, real completions in bash and fish, and the page rendered.

use crate::support::*;
use std::collections::BTreeSet;
use std::process::Command;

/// One command of the tree: its path below `imgc` (empty for `imgc` itself), its
/// subcommands, and its own flags (`--long` and `-s`; global ones only at the root).
struct Cmd {
    path: Vec<String>,
    children: Vec<String>,
    longs: Vec<String>,
    shorts: Vec<String>,
}

fn tree() -> Vec<Cmd> {
    let root = imgc::docgen::command();
    let globals: BTreeSet<String> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    let mut cmds = vec![(Vec::new(), &root)];
    for sub in imgc::docgen::subcommands(&root) {
        let path = sub
            .get_bin_name()
            .expect("built")
            .split(' ')
            .skip(1)
            .map(String::from)
            .collect();
        cmds.push((path, sub));
    }
    cmds.into_iter()
        .map(|(path, c)| {
            let own = c.get_arguments().filter(|a| {
                !a.is_positional()
                    && !a.is_hide_set()
                    && (path.is_empty() || !globals.contains(a.get_id().as_str()))
            });
            let (mut longs, mut shorts) = (Vec::new(), Vec::new());
            for a in own {
                longs.extend(a.get_long().map(|l| format!("--{l}")));
                shorts.extend(a.get_short().map(|s| format!("-{s}")));
            }
            Cmd {
                children: imgc::docgen::subcommands(c)
                    .iter()
                    .filter(|s| s.get_bin_name().unwrap().split(' ').count() == path.len() + 2)
                    .map(|s| s.get_name().to_string())
                    .collect(),
                path,
                longs,
                shorts,
            }
        })
        .collect()
}

fn script(shell: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let ws = Ws::new(&[]);
    let out = ws.ok(&["completions", shell]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("imgc.{shell}"));
    std::fs::write(&path, &out.stdout).unwrap();
    (dir, path)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{cmd:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_command_tree_is_what_the_tests_expect() {
    // Guards the tests below against an empty walk.
    let tree = tree();
    let paths: Vec<String> = tree.iter().map(|c| c.path.join(" ")).collect();
    for p in ["build", "cache gc", "query rdeps", "completions", "man"] {
        assert!(paths.contains(&p.to_string()), "{paths:?}");
    }
    assert!(tree[0].longs.contains(&"--cache-dir".to_string()));
    assert!(tree[0].shorts.contains(&"-C".to_string()));
}

#[test]
fn completion_scripts_pass_their_shells_syntax_check() {
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        assert!(
            have(shell),
            "`{shell}` is not installed (scripts/test installs it)"
        );
        let (_dir, path) = script(shell);
        run_ok(Command::new(shell).arg(check).arg(&path));
    }
}

#[test]
fn zsh_script_names_every_subcommand_and_flag() {
    let (_dir, path) = script("zsh");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("#compdef imgc\n"), "{text}");
    let tokens: BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    for c in tree() {
        for name in c.children.iter().chain(&c.longs).chain(&c.shorts) {
            assert!(
                tokens.contains(name.as_str()),
                "`{name}` (of `imgc {}`) is not in the zsh script",
                c.path.join(" ")
            );
        }
    }
}

#[test]
fn bash_completes_every_subcommand_and_flag() {
    let (_dir, path) = script("bash");
    for c in tree() {
        // Complete an empty word after the command (subcommands), then `-` (flags).
        for (word, want) in [
            ("", &c.children),
            ("-", &[c.longs.clone(), c.shorts.clone()].concat()),
        ] {
            if want.is_empty() {
                continue;
            }
            let mut words = vec!["imgc".to_string()];
            words.extend(c.path.iter().cloned());
            words.push(word.to_string());
            let line = words.join(" ");
            let program = format!(
                "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT={}\n_imgc imgc '{word}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
                path.display(),
                words
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                words.len() - 1,
                line.len(),
                words[words.len() - 2],
            );
            let out = run_ok(Command::new("bash").arg("-c").arg(&program));
            let got: BTreeSet<&str> = out.lines().collect();
            for name in want {
                assert!(
                    got.contains(name.as_str()),
                    "bash does not complete `{name}` after `{line}`: {got:?}"
                );
            }
        }
    }
}

#[test]
fn fish_completes_every_subcommand_and_flag() {
    let (_dir, path) = script("fish");
    for c in tree() {
        let mut prefix = vec!["imgc".to_string()];
        prefix.extend(c.path.iter().cloned());
        let prefix = prefix.join(" ");
        for (word, want) in [
            ("", &c.children),
            ("-", &[c.longs.clone(), c.shorts.clone()].concat()),
        ] {
            if want.is_empty() {
                continue;
            }
            let program = format!("source '{}'; complete -C '{prefix} {word}'", path.display());
            let out = run_ok(
                Command::new("fish")
                    .arg("--no-config")
                    .arg("-c")
                    .arg(&program),
            );
            let got: BTreeSet<&str> = out
                .lines()
                .map(|l| l.split('\t').next().unwrap_or(""))
                .collect();
            for name in want {
                assert!(
                    got.contains(name.as_str()),
                    "fish does not complete `{name}` after `{prefix} {word}`: {got:?}"
                );
            }
        }
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let ws = Ws::new(&[]);
    let out = ws.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `-` as roff writes it in text.
fn roff(flag: &str) -> String {
    flag.replace('-', "\\-")
}

#[test]
fn man_page_has_every_subcommand_and_flag_and_renders_cleanly() {
    let ws = Ws::new(&[]);
    let page = stdout(&ws.ok(&["man"]));
    assert!(page.contains("\n.TH imgc 1 "), "{page}");
    for c in tree() {
        if !c.path.is_empty() {
            let heading = format!(".SS \"imgc {}\"\n", c.path.join(" "));
            let plain = format!(".SS imgc {}\n", c.path.join(" "));
            assert!(
                page.contains(&heading) || page.contains(&plain),
                "no subsection for `imgc {}`",
                c.path.join(" ")
            );
        }
        for flag in c.longs.iter().chain(&c.shorts) {
            assert!(
                page.contains(&format!("\\fB{}\\fR", roff(flag))),
                "`{flag}` of `imgc {}` is not in the man page",
                c.path.join(" ")
            );
        }
    }

    // groff with every warning on: not one.
    assert!(
        have("groff"),
        "`groff` is not installed (scripts/test installs man-db)"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgc.1");
    std::fs::write(&file, &page).unwrap();
    run_ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file),
    );

    // And as a reader sees it, through man.
    assert!(
        have("man"),
        "`man` is not installed (scripts/test installs man-db)"
    );
    let shown = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANWIDTH", "200")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env_remove("MAN_KEEP_FORMATTING"),
    );
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "COMMANDS",
        "ENVIRONMENT",
        "EXIT STATUS",
    ] {
        assert!(
            shown.lines().any(|l| l == section),
            "no {section} section in:\n{shown}"
        );
    }
    for c in tree().iter().filter(|c| !c.path.is_empty()) {
        let name = format!("imgc {}", c.path.join(" "));
        assert!(
            shown.lines().any(|l| l.trim() == name),
            "`{name}` is not shown:\n{shown}"
        );
        for flag in &c.longs {
            assert!(shown.contains(flag.as_str()), "`{flag}` is not shown");
        }
    }
    assert!(shown.contains("IMGC_REMOTE_CACHE_MODE"), "{shown}");
}
