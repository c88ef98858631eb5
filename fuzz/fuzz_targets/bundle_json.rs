//! `bundle.json` as a hostile peer may write it: any bytes must give a bundle or an error,
//! never a panic, and in time linear in its size (libFuzzer's `-timeout` catches a slow one).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = cudaimg_sync::bundle::Bundle::from_json(Path::new("/nonexistent"), data)
    {
        // What an import asks of an opened bundle, without touching its (absent) parts.
        for b in &bundle.file.blobs {
            let _ = bundle.location(&b.digest);
        }
    }
});
