//! Tries the client against a running containerd by hand:
//!
//! ```text
//! cargo run -p cudaimg-containerd --example ctrd -- SOCKET NAMESPACE version
//! cargo run -p cudaimg-containerd --example ctrd -- SOCKET NAMESPACE pull REF NAME [--plain-http]
//! cargo run -p cudaimg-containerd --example ctrd -- SOCKET NAMESPACE image NAME
//! cargo run -p cudaimg-containerd --example ctrd -- SOCKET NAMESPACE delete NAME
//! ```

use std::path::Path;
use std::process::ExitCode;

use cudaimg_containerd::{Containerd, ContainerdError};
use cudaimg_oci::platform::Platform;

async fn run(args: &[String]) -> Result<(), ContainerdError> {
    let containerd = Containerd::connect(Path::new(&args[0]), &args[1]).await?;
    match (args[2].as_str(), &args[3..]) {
        ("version", []) => println!("{}", containerd.version().await?),
        ("pull", [reference, name, rest @ ..]) => {
            let plain_http = rest.iter().any(|a| a == "--plain-http");
            let started = std::time::Instant::now();
            containerd
                .pull(reference, name, &Platform::host(), plain_http)
                .await?;
            println!("pulled in {:.2} s", started.elapsed().as_secs_f64());
            println!("{:#?}", containerd.image(name).await?);
        }
        ("image", [name]) => println!("{:#?}", containerd.image(name).await?),
        ("delete", [name]) => println!("deleted: {}", containerd.delete_image(name).await?),
        _ => eprintln!("usage: ctrd SOCKET NAMESPACE version|pull REF NAME [--plain-http]|image NAME|delete NAME"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: ctrd SOCKET NAMESPACE COMMAND [ARGS]");
        return ExitCode::from(2);
    }
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
