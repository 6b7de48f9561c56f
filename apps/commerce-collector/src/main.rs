//! `commerce-collector`: see the library's documentation for what each command does.

use clap::{Parser, Subcommand};
use commerce_collector::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "Consumes commerce events, keeps product metrics, serves rankings"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events and serve the ranking API. The default.
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing();
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("commerce-collector: {e}");
            std::process::exit(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = commerce_collector::startup::Application::build(config).await?;
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate => commerce_collector::startup::migrate(&config).await,
    }
}
