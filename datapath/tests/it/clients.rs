//! Tests with real NBD clients nobody here wrote: nbdinfo, nbdcopy, qemu-img, qemu-io, fio.

use crate::harness::{PATIENCE, Server, need, pattern, run, wait_until};
use std::process::Command;

const RAM: &str = "[reactor]\ncores=[0]\nwait='adaptive'\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize='1GiB'\n";

fn file_volume(dir: &std::path::Path, cores: &str) -> String {
    format!(
        "[reactor]\ncores={cores}\nwait='adaptive'\n[[volume]]\nname='disk'\nbackend='uring'\nsize='256MiB'\npath='{}'\n",
        dir.join("disk.img").display()
    )
}

#[test]
fn nbdinfo_reports_export_and_size() {
    need("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), RAM);
    let out = run(Command::new("nbdinfo").arg("--json").arg(srv.uri("vol0")));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "vol0");
    assert_eq!(e["export-size"], 1u64 << 30);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_fua"], true);
    assert_eq!(e["can_multi_conn"], true);
    let list = run(Command::new("nbdinfo")
        .arg("--list")
        .arg("--json")
        .arg(format!("nbd://{}", srv.addr)));
    assert!(list.contains("\"vol0\""), "{list}");
}

#[test]
fn qemu_img_writes_and_compares_identical() {
    need("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), RAM);
    let src = dir.path().join("src.img");
    std::fs::write(&src, pattern(7, 48 << 20)).unwrap();
    let uri = srv.uri("vol0");
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    // compare reads the whole 1 GiB export; the tail beyond the source must be zero, which
    // qemu-img checks too (it reports a mismatch otherwise).
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(&uri));
    assert!(out.contains("Images are identical"), "{out}");
    // qemu-io: a write with FUA, then a read-back with a pattern check.
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a -f 1M 64k",
            "-c",
            "read -P 0x5a 1M 64k",
        ])
        .arg(&uri));
    let st = srv.rpc("volume_stats");
    assert!(st[0]["write_bytes"].as_u64().unwrap() >= 48 << 20, "{st}");
    assert_eq!(st[0]["errors"], 0);
}

fn fio_verify(uri: &str, size: &str) {
    let out = run(Command::new("fio").args([
        "--name=verify",
        "--verify_state_save=0",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        &format!("--size={size}"),
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--output-format=json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "fio reported an error: {job}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() > 0);
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() > 0,
        "verify pass read nothing"
    );
}

#[test]
fn fio_random_writes_qd32_verify_crc32c_on_ram() {
    need("fio");
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), RAM);
    fio_verify(&srv.uri("vol0"), "64M");
}

#[test]
fn fio_verify_and_nbdcopy_on_a_uring_file_across_two_reactors() {
    need("fio");
    need("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &file_volume(dir.path(), "[0, 1]"));
    fio_verify(&srv.uri("disk"), "32M");
    // nbdcopy opens several connections: they land on both reactors.
    let src = dir.path().join("src.img");
    std::fs::write(&src, pattern(9, 256 << 20)).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(srv.uri("disk")));
    let back = dir.path().join("back.img");
    run(Command::new("nbdcopy").arg(srv.uri("disk")).arg(&back));
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap(),
        "nbdcopy round trip differs"
    );
    let rs = srv.rpc("reactor_stats");
    let opened: Vec<u64> = rs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["conns_opened"].as_u64().unwrap())
        .collect();
    assert!(
        opened.iter().all(|&n| n > 0),
        "connections did not spread over reactors: {opened:?}"
    );
    let ios: Vec<u64> = rs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ios"].as_u64().unwrap())
        .collect();
    assert!(ios.iter().all(|&n| n > 0), "a reactor did no I/O: {ios:?}");
}

#[test]
fn data_survives_a_clean_restart_on_a_uring_file() {
    need("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &file_volume(dir.path(), "[0]"));
    let src = dir.path().join("src.img");
    std::fs::write(&src, pattern(11, 256 << 20)).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(srv.uri("disk")));
    // Writes without a flush from the client: acknowledged means in the file (O_DIRECT).
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xa5 4M 128k"])
        .arg(srv.uri("disk")));
    let srv = srv.restart();
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0xa5 4M 128k"])
        .arg(srv.uri("disk")));
    let mut expect = std::fs::read(&src).unwrap();
    expect[4 << 20..(4 << 20) + (128 << 10)].fill(0xa5);
    std::fs::write(&src, &expect).unwrap();
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(srv.uri("disk")));
    assert!(out.contains("Images are identical"), "{out}");
    // And the backing file itself holds the data.
    assert!(std::fs::read(dir.path().join("disk.img")).unwrap() == expect);
}

#[test]
fn sigterm_under_load_finishes_in_flight_writes() {
    need("fio");
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path(), &file_volume(dir.path(), "[0]"));
    let uri = srv.uri("disk");
    let mut fio = Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=64M",
            "--time_based",
            "--runtime=30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Under load: fio's writes are counted (a fixed 1.5 s may pass before fio has started
    // on a loaded machine).
    let written = || {
        srv.rpc("volume_stats")[0]["write_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(
        PATIENCE,
        || written() >= 4 << 20,
        || format!("fio wrote {} bytes", written()),
    );
    assert!(srv.stop(), "daemon did not exit cleanly under load");
    let _ = fio.wait();
}
