//! Documents generated from the command-line definitions: shell completion scripts
//! (clap_complete) and the man page (clap_mangen).
//!
//! Both come from the same `clap::Command` as `--help` ([`crate::cli::Cli`]), so a
//! new subcommand or flag reaches them without anyone remembering to: the tests
//! check every subcommand and flag of that command against the generated text.
//!
//! # One man page
//!
//! clap_mangen's own layout is git's: a page per subcommand (`imgc-build(1)`), each
//! installed separately. imgc has few commands and short option lists, so it prints
//! one page, `imgc(1)`, that holds everything: the global options, then a COMMANDS
//! section with a subsection per command (and per nested command, `imgc cache gc`)
//! giving its synopsis, description and options. The pieces are clap_mangen's own
//! renderings of each command's sections, re-headed as subsections. In the
//! subcommands, the global options are hidden (they are listed once, at the top),
//! as is the generated `-h`; the page ends with the target pattern syntax, the
//! environment variables (those clap reads, from the definitions, and those imgc
//! reads itself) and the exit statuses. Nothing in it depends on the clock or the
//! machine: the page is the same bytes wherever it is generated.

use crate::cli::{Cli, CompletionShell};
use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

/// The command-line definition, built (bin names and global options propagated).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// The completion script for `shell`.
pub fn completions(shell: CompletionShell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let name = cmd.get_name().to_string();
    match shell {
        CompletionShell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut out)
        }
        CompletionShell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut out)
        }
        CompletionShell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut out)
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Environment variables imgc reads itself (not through a flag's `env`).
const OWN_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "IMGC_CACHE_DIR",
        "The local cache directory when --cache-dir is not given (default ~/.cache/imgc).",
    ),
    (
        "SOURCE_DATE_EPOCH",
        "Overrides the workspace's source-date-epoch: the mtime of every file in every layer.",
    ),
    (
        "NO_COLOR",
        "When set and not empty, diagnostics and progress are printed without colour.",
    ),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "A spec, graph, policy or build error."),
    (
        "2",
        "A usage error: a bad flag, a malformed pattern, patterns that select nothing.",
    ),
    (
        "3",
        "An environment error: IO, permissions, a full disk or an exceeded quota.",
    ),
    ("101", "An internal error (a bug: please report it)."),
];

/// The man page `imgc(1)`, in roff.
pub fn man_page() -> String {
    let cmd = command();
    let man = Man::new(cmd.clone());
    let mut out = String::new();
    let section = |render: &dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>| {
        let mut buf = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = render(&mut buf);
        without_preamble(&String::from_utf8_lossy(&buf))
    };
    out += PREAMBLE;
    out += &section(&|w| man.render_title(w));
    out += &section(&|w| man.render_name_section(w));
    out += &section(&|w| man.render_synopsis_section(w));
    out += &section(&|w| man.render_description_section(w));
    out += &section(&|w| man.render_options_section(w));

    let mut roff = Roff::default();
    roff.control("SH", ["COMMANDS"]);
    out += &without_preamble(&roff.render());
    let globals: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().clone())
        .collect();
    for sub in subcommands(&cmd) {
        let mut sub = sub.clone();
        let own: Vec<clap::Id> = sub.get_arguments().map(|a| a.get_id().clone()).collect();
        for id in own
            .iter()
            .filter(|id| globals.contains(id) || *id == "help")
        {
            sub = sub.mut_arg(id.clone(), |a| a.hide(true));
        }
        let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        let man = Man::new(sub.clone());
        let mut head = Roff::default();
        head.control("SS", [name.as_str()]);
        out += &without_preamble(&head.render());
        out += &section_body(&section(&|w| man.render_synopsis_section(w)));
        let mut pp = Roff::default();
        pp.control("PP", []);
        out += &without_preamble(&pp.render());
        out += &section_body(&section(&|w| man.render_description_section(w)));
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            out += &section_body(&section(&|w| man.render_options_section(w)));
        }
    }

    let mut roff = Roff::default();
    if let Some(after) = cmd.get_after_help() {
        roff.control("SH", ["TARGET PATTERNS"]);
        roff.text([roman(after.to_string())]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    let mut env: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().into_owned();
            let flag = a.get_long().map_or(String::new(), |l| format!("--{l}"));
            Some((var, format!("The default of {flag}.")))
        })
        .collect();
    env.extend(
        OWN_ENVIRONMENT
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.sort();
    for (var, meaning) in &env {
        roff.control("TP", []);
        roff.text([bold(var.as_str())]);
        roff.text([roman(meaning.as_str())]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_STATUS {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*meaning)]);
    }
    out += &without_preamble(&roff.render());
    out += &section(&|w| man.render_version_section(w));
    out
}

/// Every subcommand, depth first in definition order (nested ones after their
/// parent), without hidden ones and clap's generated `help`.
pub fn subcommands(cmd: &clap::Command) -> Vec<&clap::Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        out.push(sub);
        out.extend(subcommands(sub));
    }
    out
}

/// What the roff crate writes at the start of every document it renders: it defines
/// `\*(Aq`, the apostrophe its text uses. The page has it once, at the top.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn without_preamble(rendered: &str) -> String {
    rendered
        .strip_prefix(PREAMBLE)
        .unwrap_or(rendered)
        .to_string()
}

/// A section rendered by clap_mangen without its `.SH` heading line (it becomes
/// part of a subsection).
fn section_body(rendered: &str) -> String {
    match rendered.split_once('\n') {
        Some((first, rest)) if first.starts_with(".SH") => rest.to_string(),
        _ => rendered.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_title_and_a_subsection_per_command() {
        let page = man_page();
        assert_eq!(
            page.matches("\n.TH ").count() + page.starts_with(".TH ") as usize,
            1
        );
        let cmd = command();
        for sub in subcommands(&cmd) {
            let name = sub.get_bin_name().unwrap();
            assert!(
                page.contains(&format!(".SS \"{name}\"\n"))
                    || page.contains(&format!(".SS {name}\n")),
                "no subsection for {name}"
            );
        }
        // Sections clap_mangen rendered for a subcommand lost their heading.
        assert_eq!(page.matches(".SH SYNOPSIS").count(), 1);
        assert_eq!(page.matches(".SH OPTIONS").count(), 1);
        // The roff preamble (the apostrophe string), once, at the top.
        assert!(page.starts_with(PREAMBLE));
        assert_eq!(page.matches(".ds Aq").count(), 2);
    }

    #[test]
    fn section_body_drops_only_a_heading() {
        assert_eq!(section_body(".SH OPTIONS\n.TP\nx\n"), ".TP\nx\n");
        assert_eq!(section_body(".TP\nx\n"), ".TP\nx\n");
    }
}
