//! Shell completions and the manual page, generated from the clap
//! definitions so that they cannot drift from the real options.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::{cli::Cli, Exit, Outcome};

/// `lbctl completions SHELL`: the script on stdout.
pub(crate) fn completions(shell: Shell) -> Outcome {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lbctl", &mut out);
    text(out)
}

/// `lbctl man`: the roff page on stdout.
pub(crate) fn man() -> Outcome {
    let mut out = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) => text(out),
        Err(e) => Outcome::failure(Exit::Usage, format!("rendering the manual page: {e}")),
    }
}

fn text(bytes: Vec<u8>) -> Outcome {
    Outcome::success(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_cover_every_shell_and_subcommand() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let outcome = completions(shell);
            assert_eq!(outcome.exit, Exit::Success, "{shell}");
            for needle in ["lbctl", "backend", "drain", "completions", "socket"] {
                assert!(
                    outcome.stdout.contains(needle),
                    "{shell} completions lack {needle:?}"
                );
            }
        }
        // The shell names clap accepts on the command line.
        for name in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let cli = crate::testutil::parse(&["completions", name]).expect("parses");
            assert!(matches!(
                cli.command,
                crate::cli::Command::Completions { .. }
            ));
        }
        crate::testutil::usage_error(&["completions", "tcsh"]);
        crate::testutil::usage_error(&["completions"]);
    }

    #[test]
    fn the_manual_page_is_roff_with_every_subcommand() {
        let outcome = man();
        assert_eq!(outcome.exit, Exit::Success);
        let page = outcome.stdout;
        assert!(page.contains(".TH lbctl"), "no title line");
        for needle in ["Exit status", "vips", "backend", "flow", "\\-\\-json"] {
            assert!(page.contains(needle), "the manual page lacks {needle:?}");
        }
    }
}
