//! Man pages and shell completions generated from a binary's clap
//! definition, so packaging ships exactly the flags the binary parses.
//! Each binary exposes this behind a hidden `--generate` flag.

use std::io::Write;

use anyhow::{Context, Result};
use clap::ValueEnum;

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// The man page (roff), section 8: both binaries are administration tools.
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

/// Writes `what` for `cmd` (the binary's `CommandFactory::command()`).
pub fn generate(what: Generated, mut cmd: clap::Command, out: &mut dyn Write) -> Result<()> {
    let name = cmd.get_name().to_string();
    let shell = match what {
        Generated::Man => {
            return clap_mangen::Man::new(cmd)
                .section("8")
                .render(out)
                .with_context(|| format!("writing the man page of {name}"));
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_names_the_binary() {
        let cmd = || {
            clap::Command::new("lb-example")
                .version("1.0")
                .arg(clap::Arg::new("flag").long("flag").help("A flag."))
        };
        for what in Generated::value_variants() {
            let mut out = Vec::new();
            generate(*what, cmd(), &mut out).expect("generating");
            let text = String::from_utf8(out).expect("UTF-8");
            assert!(text.contains("lb-example"), "{what:?}: {text}");
            assert!(text.contains("flag"), "{what:?}: {text}");
        }
    }
}
