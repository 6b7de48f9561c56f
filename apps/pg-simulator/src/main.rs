//! `pg-simulator`: a payment-gateway simulator for development and tests.

use clap::{Parser, Subcommand};
use pg_simulator::config::Config;

#[derive(Parser)]
#[command(version, about = "A payment-gateway simulator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway API and settle payments. The default.
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate {
        /// Never create the database (nor connect to the server's `postgres` database): it
        /// must exist, provisioned by the operator.
        #[arg(long)]
        no_create_database: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing("pg-simulator");
    let result = run().await;
    // Spans still queued for export leave before the process does.
    commerce_telemetry::shutdown_tracing();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = commerce_config::from_env_or_exit("pg-simulator", Config::read);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = pg_simulator::Application::build(config).await?;
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate { no_create_database } => {
            commerce_db::migrate(
                &config.database_url,
                pg_simulator::MIGRATIONS,
                !no_create_database,
            )
            .await
        }
    }
}
