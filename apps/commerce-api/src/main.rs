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
    /// Run only the outbox relay, until SIGTERM; `/metrics` and `/health/*` on `HTTP_ADDR`.
    Relay,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing("commerce-api");
    let result = run().await;
    // Spans still queued for export leave before the process does.
    commerce_telemetry::shutdown_tracing();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Migrate = command {
        // A migration job needs the database, not the server's secrets.
        let url = commerce_config::from_env_or_exit("commerce-api", Config::read_database_url);
        return commerce_db::migrate(&url, commerce_api::MIGRATIONS).await;
    }
    let config = commerce_config::from_env_or_exit("commerce-api", Config::read);
    match command {
        Command::Serve => {
            let app = commerce_api::startup::Application::build(config).await?;
            // With the database up, settle the admin's credentials before serving: production
            // refuses to start while an administrator accepts the development password. (With it
            // down, the same runs in the background and keeps the instance unready.)
            use commerce_api::startup::{AdminCredentials, secure_admin};
            if let Ok(AdminCredentials::DevelopmentPassword(login_id)) =
                secure_admin(app.state()).await
            {
                eprintln!(
                    "commerce-api: the administrator account `{login_id}` accepts the development password; \
                     give it another password (or remove its admin role) before starting in production"
                );
                std::process::exit(2);
            }
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate => unreachable!("handled above"),
        Command::Relay => {
            commerce_api::startup::relay_server(config)
                .await?
                .run_until_stopped(commerce_web::shutdown_signal())
                .await
        }
        Command::Seed => commerce_api::seed::seed(&config.database_url, &config.topics()).await,
    }
}
