//! The `presence-proxy` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use presence_proxy::inspect::inspect_file;

#[derive(Debug, Parser)]
#[command(
    name = "presence-proxy",
    version,
    about = "SIP outbound proxy that keeps desk phones and Microsoft Teams presence in step"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a configuration file until SIGINT/SIGTERM.
    Run {
        /// The configuration file (TOML); see config/example.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Parse each file as one SIP datagram; print what is understood, or the error.
    /// Exits 0 when every file is a valid SIP message, 1 otherwise.
    Inspect {
        /// Files holding one SIP message each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the whole product on this machine, nothing to configure: the proxy, a PBX
    /// stand-in, simulated desk phones with BLF lamps, the Graph emulator as Microsoft
    /// Teams, and the portal (its address and admin password are printed); runs until
    /// Ctrl-C.
    Demo {
        /// Listen on free ports instead of 127.0.0.1:5060, 5070, 8080 and 8400.
        #[arg(long)]
        ephemeral_ports: bool,
    },
    /// Load and validate a configuration file; print a summary, or the error with its
    /// file, line and key. Exits 0 when the file is valid, 1 otherwise.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Read a password (first line of stdin) and print its argon2id hash, the value of
    /// `web.admin_password_hash` in the configuration.
    HashPassword,
    /// Run the emulator of the Microsoft identity platform and Graph presence endpoints
    /// (login, Graph v1.0 and the /_emulator/ control API on one listener) until Ctrl-C.
    GraphEmulator {
        /// Address to listen on, e.g. 127.0.0.1:8400.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: std::net::SocketAddr,
        /// Seed file (TOML: tenant, app, users); default: the demo tenant `contoso`.
        #[arg(long)]
        seed: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Inspect { files } => {
            let mut all_ok = true;
            for file in &files {
                let report = inspect_file(file);
                println!("{}:", file.display());
                print!("{}", report.text);
                all_ok &= report.ok;
            }
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Demo { ephemeral_ports } => presence_proxy::demo::demo(ephemeral_ports),
        Command::HashPassword => hash_password(),
        Command::GraphEmulator { listen, seed } => {
            presence_proxy::emulator::run_cli(listen, seed.as_deref())
        }
        Command::CheckConfig { file } => match presence_proxy::config::Config::load(&file) {
            Ok(config) => {
                println!("{}: ok", file.display());
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match presence_proxy::config::Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = presence_proxy::telemetry::init_logging(&config.log) {
        eprintln!("{}: {err}", path.display());
        return ExitCode::from(1);
    }
    // one thread: the proxy core is single-threaded by design, and a second worker
    // would only add cross-thread wake-ups on the per-message path
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(presence_proxy::app::run(&config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(1)
        }
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    match presence_proxy::web::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
