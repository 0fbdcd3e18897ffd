//! A receiver's transfer folder under `kill -9`: a real child process writes verified
//! chunks into it and is killed at random moments; after each kill the folder must
//! name only chunks that are on disk and verify, never fewer than before, and the
//! transfer finishes from it. (A kill cannot show what fsync protects against, power
//! loss; it shows that nothing relies on the writer getting to run its destructors.)

use confab::transfer::manifest::{CHUNK_BYTES, Manifest};
use confab::transfer::state::{ReceiveOffer, ReceiveState, TransferId};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "CONFAB_TRANSFER_KILL_CHILD";
const TEST_NAME: &str = "a_kill_9_never_leaves_the_folder_naming_a_chunk_not_on_disk";
const CHUNKS: usize = 256;

/// The child: reopens the folder and writes every missing chunk, from the source file.
fn child(dir: &Path, source: &Path) -> ! {
    let mut state = ReceiveState::open(dir).expect("open the folder");
    let data = std::fs::read(source).expect("read the source");
    let missing: Vec<u32> = state.held().missing().collect();
    for i in missing {
        let start = i as usize * CHUNK_BYTES as usize;
        let end = (start + CHUNK_BYTES as usize).min(data.len());
        state.write_chunk(i, &data[start..end]).expect("write a chunk");
    }
    state.flush().expect("flush");
    std::process::exit(0)
}

fn held_chunks_verify(dir: &Path, manifest: &Manifest) -> u32 {
    let state = ReceiveState::open(dir).expect("the folder opens after a kill");
    let part = std::fs::File::open(dir.join("data.part")).unwrap();
    for i in (0..manifest.chunks()).filter(|&i| state.held().get(i)) {
        let mut buf = vec![0u8; manifest.chunk_len(i)];
        part.read_exact_at(&mut buf, Manifest::chunk_offset(i)).unwrap();
        assert!(manifest.verify_chunk(i, &buf), "the bitmap names chunk {i}, which is not on disk");
    }
    state.held().count()
}

#[test]
fn a_kill_9_never_leaves_the_folder_naming_a_chunk_not_on_disk() {
    if let Ok(paths) = std::env::var(CHILD_ENV) {
        let (dir, source) = paths.split_once('\n').expect("dir and source");
        child(Path::new(dir), Path::new(source));
    }
    let home = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(21);
    let mut data = vec![0u8; CHUNKS * CHUNK_BYTES as usize - 1000];
    rng.fill_bytes(&mut data);
    let source = home.path().join("source.bin");
    std::fs::write(&source, &data).unwrap();
    let manifest = Manifest::from_reader(&data[..]).unwrap();
    let dir = home.path().join("transfers/t");
    let dest = home.path().join("files/source.bin");
    let offer = ReceiveOffer {
        id: TransferId([3; 16]),
        manifest_hash: manifest.hash(),
        cert_fingerprint: [0; 32],
        destination: dest.clone(),
    };
    let mut state = ReceiveState::create(&dir, offer).unwrap();
    state.set_manifest(manifest.clone()).unwrap();
    drop(state);

    let mut before = 0;
    let mut killed_mid_way = 0;
    for round in 0..8 {
        let bitmap = dir.join("held.bitmap");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let seen = mtime(&bitmap);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{}\n{}", dir.display(), source.display()))
            .spawn()
            .unwrap();
        // Wait for the child to flush once, then kill it a random moment later.
        let deadline = Instant::now() + Duration::from_secs(20);
        while mtime(&bitmap) == seen && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "round {round}: the child never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
        let exited = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        if !exited && !status.success() {
            killed_mid_way += 1;
        }
        let now = held_chunks_verify(&dir, &manifest);
        eprintln!("round {round}: {now} of {} chunks named after the kill", manifest.chunks());
        assert!(now >= before, "round {round}: the folder went back from {before} to {now} chunks");
        before = now;
        if now == manifest.chunks() {
            break;
        }
    }
    assert!(killed_mid_way >= 2, "the child was killed mid-way in {killed_mid_way} rounds only");

    let mut state = ReceiveState::open(&dir).unwrap();
    for i in state.held().missing().collect::<Vec<_>>() {
        let start = i as usize * CHUNK_BYTES as usize;
        state.write_chunk(i, &data[start..(start + CHUNK_BYTES as usize).min(data.len())]).unwrap();
    }
    assert_eq!(state.finish().unwrap(), dest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}
