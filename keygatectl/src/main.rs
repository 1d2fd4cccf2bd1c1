//! keygatectl: the keystore's admin API from a shell or a script.
//!
//! Every admin operation of the keystore (keystore/README.md, "Admin API") is one subcommand.
//! The store's address comes from `--url` or `KEYGATE_URL`; the credential from `--key-file`
//! (or `KEYGATE_KEY_FILE`) or the `KEYGATE_KEY` variable, never from a command-line argument
//! (which would land in shell history and in `ps`). Keys to import, and leaked keys to find
//! or revoke, are read from a file (or standard input) too. Output (`-o`): tables for people,
//! the API's JSON or YAML, or identifiers. Exit status: 0 on success, 1 when the API refused
//! the call (its message is printed), 2 for bad usage, a missing credential or a destructive
//! command not confirmed, 3 when the store could not be reached.

mod client;
mod commands;
mod input;
mod openviking;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygatectl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
