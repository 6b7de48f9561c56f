//! `commerce-api`: see the crate documentation of the library for what each command does.

use clap::{Parser, Subcommand};
use commerce_api::config::Config;

#[derive(Parser)]
#[command(version, about = "The storefront's transactional API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and, unless disabled, the outbox relay). The default.
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate,
    /// Insert a small demo catalog unless products exist, then exit.
    Seed,
    /// Run only the outbox relay (no HTTP), until SIGTERM.
    Relay,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing();
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("commerce-api: {e}");
            std::process::exit(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = commerce_api::startup::Application::build(config).await?;
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate => {
            commerce_db::migrate(&config.database_url, commerce_api::MIGRATIONS).await
        }
        Command::Relay => {
            let pool = commerce_db::pool(&config.database_url, 4)?;
            let (stop_rx, stop) = commerce_web::stop_flag(commerce_web::shutdown_signal());
            tokio::spawn(stop);
            commerce_api::relay::run(config.relay(), pool, stop_rx).await;
            Ok(())
        }
        Command::Seed => {
            let topics = commerce_api::outbox::Topics {
                catalog: config.catalog_topic.clone(),
                order: config.order_topic.clone(),
            };
            commerce_api::seed::seed(&config.database_url, &topics).await
        }
    }
}
