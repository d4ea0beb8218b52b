//! The configuration's tests: parsing, defaults, and every refusal of `Config::validate`.

use super::*;

#[test]
fn default_is_valid_and_exports_vol0() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.effective_exports()[0].name, "vol0");
    assert_eq!(c.volumes[0].size.0, 1 << 30);
    assert_eq!(c.nvmf.listen[0].port(), 4420);
    assert_eq!(
        c.effective_subsystems()[0].nqn,
        "nqn.2026-11.io.twinblk:vol0"
    );
    assert_eq!(
        c.iscsi.listen,
        vec!["127.0.0.1:3260".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        c.effective_iscsi_targets()[0].iqn,
        "iqn.2026-11.io.twinblk:vol0"
    );
    assert_eq!(c.effective_iscsi_targets()[0].luns, vec!["vol0"]);
}

#[test]
fn a_cdp_view_volume_names_exactly_one_point_and_nothing_else() {
    let head = "[[volume]]\nname='v'\nbackend='cdp-view'\nsize='1MiB'\n";
    let ok = Config::from_toml(&format!(
        "{head}[volume.view]\ndir='/j'\ntime=5\nsandbox=true\n"
    ))
    .unwrap();
    let w = ok.volumes[0].view.as_ref().unwrap();
    assert_eq!((w.time, w.seq, w.sandbox), (Some(5), None, true));
    for (bad, says) in [
        (head.to_string(), "needs a [volume.view]"),
        (format!("{head}[volume.view]\ndir='/j'\n"), "exactly one of"),
        (
            format!("{head}[volume.view]\ndir='/j'\nseq=1\ntime=2\n"),
            "exactly one of",
        ),
        (
            format!("{head}mirror=true\n[volume.view]\ndir='/j'\nseq=1\n"),
            "cannot be mirrored",
        ),
        (
            format!("{head}path='/x'\n[volume.view]\ndir='/j'\nseq=1\n"),
            "takes no path",
        ),
        (
            "[[volume]]\nname='v'\nbackend='malloc'\nsize='1MiB'\n[volume.view]\ndir='/j'\nseq=1\n"
                .to_string(),
            "cdp-view only",
        ),
    ] {
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn iscsi_targets_parse_and_are_checked() {
    let vol = "[[volume]]\nname='vol0'\nbackend='malloc'\nsize=4096\n";
    // A file without [iscsi] serves no iSCSI (tests and existing files keep their ports).
    let c = Config::from_toml(vol).unwrap();
    assert!(c.iscsi.listen.is_empty());
    assert_eq!(c.iscsi.nop_in_interval_ms, 15_000);
    assert_eq!(c.iscsi.max_connections, 4);
    let one = format!("[iscsi]\nmax_connections=1\n{vol}");
    assert_eq!(Config::from_toml(&one).unwrap().iscsi.max_connections, 1);
    let zero = format!("[iscsi]\nmax_connections=0\n{vol}");
    assert!(Config::from_toml(&zero).is_err());
    let ok = format!(
        "[iscsi]\nlisten=['127.0.0.1:0']\n[[iscsi.target]]\niqn='iqn.x:a'\nluns=['vol0']\nchap_user='u'\nchap_secret='s'\n{vol}"
    );
    let c = Config::from_toml(&ok).unwrap();
    assert_eq!(
        c.effective_iscsi_targets()[0].chap_user.as_deref(),
        Some("u")
    );
    for bad in [
        "[[iscsi.target]]\niqn='bad'\nluns=['vol0']\n",
        "[[iscsi.target]]\niqn='iqn.x'\nluns=['nope']\n",
        "[[iscsi.target]]\niqn='iqn.x'\nluns=[]\n",
        "[[iscsi.target]]\niqn='iqn.x'\nluns=['vol0']\nchap_user='u'\n",
        "[[iscsi.target]]\niqn='iqn.x'\nluns=['vol0']\nchap_user='u'\nchap_secret='s'\nchap_mutual_user='t'\n",
    ] {
        assert!(Config::from_toml(&format!("{bad}{vol}")).is_err(), "{bad}");
    }
}

#[test]
fn nvmf_subsystems_parse_and_are_checked() {
    let c = Config::from_toml(
        "[nvmf]\nlisten=['127.0.0.1:0']\n[[nvmf.subsystem]]\nnqn='nqn.x:a'\nallowed_hosts=['nqn.h']\nnamespaces=['vol0']\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize=4096\n",
    )
    .unwrap();
    assert_eq!(c.effective_subsystems()[0].allowed_hosts, vec!["nqn.h"]);
    let e = Config::from_toml(
        "[[nvmf.subsystem]]\nnqn='nqn.x'\nnamespaces=['nope']\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize=4096\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("no volume"), "{e}");
    let e = Config::from_toml(
        "[[nvmf.subsystem]]\nnqn='bad'\nnamespaces=['vol0']\n[[volume]]\nname='vol0'\nbackend='malloc'\nsize=4096\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("nqn."), "{e}");
}

#[test]
fn each_mirror_site_has_its_own_controller_id_range_and_ranges_are_checked() {
    let m = |me: &str, peer: &str| {
        format!(
            "[mirror]\nsite='{me}'\npeer_site='{peer}'\nlisten=['127.0.0.1:1']\npeer='127.0.0.1:2'\nwitness_key_file='/k'\n"
        )
    };
    let a = Config::from_toml(&m("a", "b")).unwrap();
    let b = Config::from_toml(&m("b", "a")).unwrap();
    assert_eq!(a.cntlid_range(), 1..=0x7FF7);
    assert_eq!(b.cntlid_range(), 0x7FF8..=0xFFEF);
    assert_ne!(a.nvmf_first_port_id(), b.nvmf_first_port_id());
    assert_eq!(Config::default().cntlid_range(), 1..=MAX_CNTLID);
    let c = Config::from_toml(&format!(
        "[nvmf]\nmin_cntlid=100\nmax_cntlid=199\n{}",
        m("b", "a")
    ))
    .unwrap();
    assert_eq!(c.cntlid_range(), 100..=199);
    for bad in [
        "[nvmf]\nmin_cntlid=0\n",
        "[nvmf]\nmax_cntlid=0xFFF0\n",
        "[nvmf]\nmin_cntlid=10\nmax_cntlid=9\n",
    ] {
        let e = Config::from_toml(bad).unwrap_err();
        assert!(e.to_string().contains("cntlid"), "{bad}: {e}");
    }
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("64K"), Ok(65536));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
    assert!(parse_size("1X").is_err());
    assert!(parse_size("99999999999999999999").is_err());
}

#[test]
fn full_file_parses() {
    let c = Config::from_toml(
        r#"
        [reactor]
        cores = [0]
        wait = "poll"
        [nbd]
        listen = ["127.0.0.1:20809"]
        [[nbd.export]]
        name = "a"
        volume = "disk"
        read_only = true
        [[volume]]
        name = "disk"
        backend = "uring"
        size = "64MiB"
        path = "/tmp/x.img"
        "#,
    )
    .unwrap();
    assert_eq!(c.reactor.wait, Wait::Poll);
    assert_eq!(c.volumes[0].size.0, 64 << 20);
    assert!(c.effective_exports()[0].read_only);
}

#[test]
fn mistakes_are_named() {
    let e = Config::from_toml("[[volume]]\nname='a'\nbackend='uring'\nsize=4096\n").unwrap_err();
    assert!(e.to_string().contains("needs a path"), "{e}");
    let e = Config::from_toml("[[volume]]\nname='a'\nbackend='malloc'\nsize=1000\n").unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
    let e = Config::from_toml("[reactor]\ncores=[0,0]\n").unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    for (bg, wanted) in [
        ("[]", "is empty"),
        ("[0,0]", "listed twice in reactor.background_cores"),
        ("[100000]", "reactor.background_cores[0] = 100000"),
    ] {
        let e = Config::from_toml(&format!("[reactor]\nbackground_cores={bg}\n")).unwrap_err();
        assert!(e.to_string().contains(wanted), "{bg}: {e}");
    }
    let e =
        Config::from_toml("[reactor]\ncores=[0]\nwait='poll'\nbackground_cores=[0]\n").unwrap_err();
    assert!(e.to_string().contains("polls"), "{e}");
    // Sharing a reactor's core is the operator's choice when the reactor can sleep.
    let c = Config::from_toml("[reactor]\ncores=[0]\nwait='interrupt'\nbackground_cores=[0]\n")
        .unwrap();
    assert_eq!(c.reactor.background_cores, Some(vec![0]));
    let e = Config::from_toml("[reactor]\nbogus=1\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)), "{e}");
    let e = Config::from_toml("[[nbd.export]]\nname='x'\nvolume='nope'\n").unwrap_err();
    assert!(e.to_string().contains("no volume"), "{e}");
}

#[test]
fn cdp_sections_parse_and_mistakes_are_named() {
    let vol = |name: &str, cdp: &str| {
        format!(
            "[[volume]]\nname='{name}'\nbackend='malloc'\nsize=4096\ngroup='g'\n[volume.cdp]\n{cdp}\n"
        )
    };
    let c = Config::from_toml(&format!(
        "{}{}",
        vol("a", "dir='/j/a'"),
        vol("b", "dir='/j/b'\nsegment_size='8MiB'\nenabled=false")
    ))
    .unwrap();
    let a = c.volumes[0].cdp.as_ref().unwrap();
    assert!(a.enabled);
    assert_eq!(a.segment_size.0, 64 << 20);
    assert_eq!(c.volumes[1].cdp.as_ref().unwrap().segment_size.0, 8 << 20);
    assert!(Config::default().volumes[0].cdp.is_none(), "off by default");
    let e = Config::from_toml(&vol("a", "dir='/j'\nsegment_size='1MiB'")).unwrap_err();
    assert!(e.to_string().contains("cdp.segment_size"), "{e}");
    let e = Config::from_toml(&format!("{}{}", vol("a", "dir='/j'"), vol("b", "dir='/j'")))
        .unwrap_err();
    assert!(e.to_string().contains("same cdp.dir"), "{e}");
    let e = Config::from_toml(&vol("a", "dir=''")).unwrap_err();
    assert!(e.to_string().contains("cdp.dir is empty"), "{e}");
    let r = Config::from_toml(&vol(
        "a",
        "dir='/j'\nretention_age='2h'\nretention_bytes='1GiB'",
    ))
    .unwrap();
    let rc = r.volumes[0].cdp.as_ref().unwrap();
    assert_eq!(rc.retention_age_ns(), Some(7200 * 1_000_000_000));
    for (bad, says) in [
        ("retention_age='2w'", "unit"),
        ("retention_age='0s'", "zero"),
        ("retention_bytes='64MiB'", "two segments"),
    ] {
        let e = Config::from_toml(&vol("a", &format!("dir='/j'\n{bad}"))).unwrap_err();
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    let e = Config::from_toml(&vol("a", "dir='/j'\nretention='1d'")).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)), "{e}");
}

#[test]
fn mirror_mistakes_are_named() {
    let m = "[mirror]\nsite='a'\npeer_site='b'\nlisten=['127.0.0.1:1']\npeer='127.0.0.1:2'\nwitness_key_file='/k'\n";
    let vol = |name: &str, leader: &str, group: &str| {
        format!(
            "[[volume]]\nname='{name}'\nbackend='malloc'\nsize=4096\nmirror=true\nleader='{leader}'\ngroup='{group}'\n"
        )
    };
    let ok = format!("{m}{}{}", vol("x", "a", "g"), vol("y", "a", "g"));
    assert!(Config::from_toml(&ok).is_ok());
    let e =
        Config::from_toml(&format!("{m}{}{}", vol("x", "a", "g"), vol("y", "b", "g"))).unwrap_err();
    assert!(e.to_string().contains("different leaders"), "{e}");
    let e = Config::from_toml(&format!("{m}{}", vol("x", "c", "g"))).unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
    let e = Config::from_toml(&vol("x", "a", "g")).unwrap_err();
    assert!(e.to_string().contains("no [mirror] section"), "{e}");
    assert!(Config::from_toml(&format!("{m}witness='127.0.0.1:3'\n")).is_ok());
    let keyless = m.replace("witness_key_file='/k'\n", "");
    let e = Config::from_toml(&format!("{keyless}{}", vol("x", "a", "g"))).unwrap_err();
    assert!(
        e.to_string().contains("witness_key_file is required"),
        "{e}"
    );
}

/// A valid mirror section plus `extra` lines, and one mirrored volume of `size` bytes.
fn mirror_with(extra: &str, size: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!(
        "[mirror]\nsite='a'\npeer_site='b'\nlisten=['127.0.0.1:1']\npeer='127.0.0.1:2'\n\
         witness_key_file='/k'\n{extra}\n\
         [[volume]]\nname='v'\nbackend='malloc'\nsize='{size}'\nmirror=true\n"
    ))
}

#[track_caller]
fn refused(extra: &str, size: &str, says: &[&str]) {
    let e = mirror_with(extra, size).expect_err(extra).to_string();
    for w in says {
        assert!(e.contains(w), "{extra}: {e:?} does not say {w:?}");
    }
}

#[test]
fn a_dirty_granularity_above_the_message_limit_is_refused() {
    assert!(mirror_with("dirty_granularity='8MiB'", "1GiB").is_ok());
    refused(
        "dirty_granularity='16MiB'",
        "1GiB",
        &["mirror.dirty_granularity", "8388608", "resync"],
    );
    refused("dirty_granularity='3KiB'", "1GiB", &["power of two"]);
}

#[test]
fn activity_log_sizes_are_checked() {
    assert!(mirror_with("activity_log_extent='64KiB'", "1GiB").is_ok());
    assert!(mirror_with("activity_log=false\nactivity_log_extents=1", "1GiB").is_ok());
    refused(
        "activity_log_extent='32KiB'",
        "1GiB",
        &["mirror.activity_log_extent", "dirty_granularity"],
    );
    refused("activity_log_extent='3MiB'", "1GiB", &["power of two"]);
    refused("activity_log_extent='2GiB'", "1GiB", &["1 GiB"]);
    refused(
        "activity_log_extents=0",
        "1GiB",
        &["mirror.activity_log_extents", "65536"],
    );
    refused("activity_log_extents=65537", "1GiB", &["65536"]);
}

#[test]
fn a_volume_with_more_regions_than_the_bitmaps_hold_is_refused() {
    // 2^32 regions of 4 KiB: 16 TiB is the most.
    assert!(mirror_with("dirty_granularity='4KiB'", "16TiB").is_ok());
    refused(
        "dirty_granularity='4KiB'",
        "32TiB",
        &["volume v", "regions", "4294967296", "dirty_granularity"],
    );
}

#[test]
fn a_resync_rate_below_one_mib_or_one_region_per_second_is_refused() {
    assert!(mirror_with("resync_rate='1MiB'", "1GiB").is_ok());
    refused(
        "resync_rate='512KiB'",
        "1GiB",
        &["mirror.resync_rate", "1048576"],
    );
    refused(
        "resync_rate='2MiB'\ndirty_granularity='4MiB'",
        "1GiB",
        &["mirror.resync_rate", "4194304", "region"],
    );
}

#[test]
fn a_backlog_smaller_than_one_message_or_overflowing_is_refused() {
    assert!(mirror_with("max_backlog_mib=8", "1GiB").is_ok());
    refused(
        "max_backlog_mib=7",
        "1GiB",
        &["mirror.max_backlog_mib", "8", "diverged"],
    );
    refused(
        "max_backlog_mib=17592186044416",
        "1GiB",
        &["mirror.max_backlog_mib", "16777216"],
    );
}

#[test]
fn heartbeat_peer_dead_and_peer_timeout_that_cannot_work_together_are_refused() {
    assert!(
        mirror_with(
            "heartbeat_ms=100\npeer_dead_ms=400\npeer_timeout_ms=400",
            "1GiB"
        )
        .is_ok()
    );
    refused("heartbeat_ms=5", "1GiB", &["mirror.heartbeat_ms", "10"]);
    refused(
        "heartbeat_ms=100\npeer_dead_ms=100",
        "1GiB",
        &["mirror.peer_dead_ms", "150"],
    );
    refused(
        "peer_dead_ms=400\npeer_timeout_ms=399",
        "1GiB",
        &["mirror.peer_timeout_ms", "mirror.peer_dead_ms", "400"],
    );
    // With a witness, held requests must also outlive the grant request.
    assert!(
        mirror_with(
            "witness='127.0.0.1:3'\npeer_dead_ms=400\nwitness_timeout_ms=1500\npeer_timeout_ms=1900",
            "1GiB"
        )
        .is_ok()
    );
    refused(
        "witness='127.0.0.1:3'\npeer_dead_ms=400\nwitness_timeout_ms=1500\npeer_timeout_ms=1899",
        "1GiB",
        &["mirror.peer_timeout_ms", "witness_timeout_ms", "1900"],
    );
    refused(
        "witness='127.0.0.1:3'\nwitness_heartbeat_ms=0",
        "1GiB",
        &["mirror.witness_heartbeat_ms"],
    );
    refused(
        "witness='127.0.0.1:3'\nwitness_timeout_ms=0",
        "1GiB",
        &["mirror.witness_timeout_ms"],
    );
}

/// The mirror test config plus `hosts` (TOML `[[host]]` tables) after the volume.
fn with_hosts(hosts: &str) -> Result<Config, ConfigError> {
    Config::from_toml(&format!(
        "[mirror]\nsite='b'\npeer_site='a'\nlisten=['127.0.0.1:1']\npeer='127.0.0.1:2'\n\
         witness_key_file='/k'\n\
         [[volume]]\nname='v'\nbackend='malloc'\nsize='1MiB'\nmirror=true\n{hosts}"
    ))
}

#[test]
fn a_host_list_parses_and_resolves_against_this_site() {
    use crate::bdev::host_path::Site;
    let c = with_hosts(
        "[[host]]\nname='iqn.1998-01.com.vmware:esx1'\nsite='a'\n\
         [[host]]\nname='nqn.2014-08.org.nvmexpress:uuid:h2'\nsite='b'\n",
    )
    .unwrap();
    assert_eq!(c.hosts.len(), 2);
    assert_eq!(
        c.hosts[0],
        HostConfig {
            name: "iqn.1998-01.com.vmware:esx1".into(),
            site: "a".into()
        }
    );
    // This site is b: the host at a is at the peer.
    let h = c.host_sites();
    assert_eq!(h.site_of("iqn.1998-01.com.vmware:esx1"), Some(Site::Peer));
    assert_eq!(
        h.site_of("nqn.2014-08.org.nvmexpress:uuid:h2"),
        Some(Site::Here)
    );
    assert_eq!(h.site_of("iqn.1998-01.com.vmware:esx3"), None);
    assert_eq!((h.name_of(Site::Here), h.name_of(Site::Peer)), ("b", "a"));
    // No list: nobody is listed.
    assert!(with_hosts("").unwrap().host_sites().is_empty());
    assert!(Config::default().host_sites().is_empty());
}

#[test]
fn host_list_mistakes_are_named() {
    let e = with_hosts("[[host]]\nname='iqn.x:h1'\nsite='c'\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("iqn.x:h1") && e.contains("\"c\" is unknown"),
        "{e}"
    );
    assert!(e.contains("\"b\"") && e.contains("\"a\""), "{e}");
    let e =
        with_hosts("[[host]]\nname='iqn.x:h1'\nsite='a'\n[[host]]\nname='iqn.x:h1'\nsite='b'\n")
            .unwrap_err()
            .to_string();
    assert!(e.contains("\"iqn.x:h1\" is listed twice"), "{e}");
    let e = with_hosts("[[host]]\nname=''\nsite='a'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 to 223 bytes"), "{e}");
    let e = Config::from_toml("[[host]]\nname='iqn.x:h1'\nsite='a'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no [mirror] section"), "{e}");
    // A misspelt key is a parse error.
    assert!(matches!(
        with_hosts("[[host]]\nname='iqn.x:h1'\nsite='a'\nsit='b'\n"),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn volume_names_are_the_run_time_ones_no_path_separators_nul_or_non_ascii() {
    // A volume's name becomes part of file names (its mirror state file in the state
    // directory), NQNs and IQNs: the same rule as `volume_create`'s.
    let long = "v".repeat(65);
    for bad in [
        "a/b",
        "../x",
        "..\\u0000x",
        "a\\u0000b",
        "vol\\u00e9",
        "a b",
        long.as_str(),
    ] {
        let e = Config::from_toml(&format!(
            "[[volume]]\nname=\"{bad}\"\nbackend='malloc'\nsize='1MiB'\n"
        ))
        .expect_err(bad);
        assert!(e.to_string().contains("1 to 64 of"), "{bad}: {e}");
    }
    for good in ["vol0", "db.log-1_a:b", &"v".repeat(64)] {
        Config::from_toml(&format!(
            "[[volume]]\nname=\"{good}\"\nbackend='malloc'\nsize='1MiB'\n"
        ))
        .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn nqns_iqns_and_host_names_with_nul_or_control_characters_are_refused() {
    let vol = "[[volume]]\nname='v'\nbackend='malloc'\nsize='1MiB'\n";
    for (body, want) in [
        (
            "[[nvmf.subsystem]]\nnqn=\"nqn.x:a\\u0000b\"\nnamespaces=['v']\n",
            "subsystem NQN",
        ),
        (
            "[[nvmf.subsystem]]\nnqn='nqn.x:a'\nnamespaces=['v']\nallowed_hosts=[\"nqn.h\\u0007\"]\n",
            "host NQN",
        ),
        (
            "[[iscsi.target]]\niqn=\"iqn.x:a\\u0000b\"\nluns=['v']\n",
            "iSCSI target name",
        ),
        (
            "[[iscsi.target]]\niqn='iqn.x:a'\nluns=['v']\nallowed_initiators=[\"iqn.i\\u0000\"]\n",
            "initiator name",
        ),
    ] {
        let e = Config::from_toml(&format!("{vol}{body}")).expect_err(body);
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
}

#[test]
fn a_volume_size_past_what_a_file_offset_can_address_is_refused() {
    // 2^63 and u64::MAX rounded down to a block (as strings: TOML integers stop below
    // 2^63): offsets into a file or device are signed 64-bit (off_t), so such a volume could
    // never be set up.
    for size in [1u64 << 63, u64::MAX / 512 * 512] {
        let e = Config::from_toml(&format!(
            "[[volume]]\nname='v'\nbackend='malloc'\nsize='{size}'\n"
        ))
        .expect_err("accepted");
        assert!(e.to_string().contains("at most"), "{size}: {e}");
    }
    Config::from_toml("[[volume]]\nname='v'\nbackend='malloc'\nsize='1TiB'\n").unwrap();
}

#[test]
fn extra_portals_are_host_port_and_tag_with_a_real_port_and_tag() {
    let ok = "[iscsi]\nlisten=['127.0.0.1:0']\nextra_portals=['10.0.0.2:3260,2', '[fd00::2]:3260,2', 'site-b.example:3261,3']\n";
    Config::from_toml(ok).unwrap();
    for bad in [
        "10.0.0.2:65536,2",
        "10.0.0.2:0,2",
        "10.0.0.2:3260",
        "10.0.0.2:3260,0",
        "10.0.0.2:3260,65536",
        "10.0.0.2,2",
        ":3260,2",
        "10.0.0.2:3260,2\\u0000TargetName=iqn.evil",
        "10 0 0 2:3260,2",
    ] {
        let e = Config::from_toml(&format!(
            "[iscsi]\nlisten=['127.0.0.1:0']\nextra_portals=[\"{bad}\"]\n"
        ))
        .expect_err(bad);
        assert!(e.to_string().contains("extra_portals"), "{bad}: {e}");
    }
}

#[test]
fn a_reactor_spin_past_reactor_set_waits_limit_is_refused() {
    // reactor_set_wait takes 0 to 1,000,000 µs and falls back to [reactor] spin_us: a
    // larger configured spin was run clamped without a word, and made every
    // {"wait": "adaptive"} without its own spin_us refused.
    let e = Config::from_toml("[reactor]\nwait='adaptive'\nspin_us=1000001\n").unwrap_err();
    assert!(e.to_string().contains("reactor.spin_us"), "{e}");
    Config::from_toml("[reactor]\nwait='adaptive'\nspin_us=1000000\n").unwrap();
}

#[test]
fn a_slow_wait_past_a_day_is_refused() {
    // (The largest TOML integer: its due time would overflow an Instant and panic the reactor.)
    let cfg = |ms: u64| {
        Config::from_toml(&format!(
            "[[volume]]\nname='v'\nbackend='malloc'\nsize='1MiB'\nslow_range=[0, 4096]\nslow_ms={ms}\n"
        ))
    };
    for ms in [super::MAX_SLOW_MS + 1, i64::MAX as u64] {
        let e = cfg(ms).expect_err("accepted");
        assert!(e.to_string().contains("slow_ms"), "{ms}: {e}");
    }
    cfg(super::MAX_SLOW_MS).unwrap();
}

#[test]
fn a_volatile_cache_is_for_a_uring_volume() {
    let cfg = |body: &str| Config::from_toml(&format!("[[volume]]\nname='v'\nsize='1MiB'\n{body}"));
    cfg("backend='uring'\npath='/tmp/v.img'\nvolatile_cache=true\n").unwrap();
    // Under a CDP layer too: the layer then never seals its log clean at a stop.
    cfg(
        "backend='uring'\npath='/tmp/v.img'\nvolatile_cache=true\n[volume.cdp]\ndir='/tmp/v.cdp'\n",
    )
    .unwrap();
    let e = cfg("backend='malloc'\nvolatile_cache=true\n").expect_err("accepted");
    assert!(e.to_string().contains("volatile_cache"), "{e}");
}

#[test]
fn two_volumes_on_one_backing_file_or_a_backing_file_in_a_cdp_directory_are_refused() {
    // Two volumes on one file write over each other's blocks; a volume kept in a CDP
    // directory (its `base.img`, a segment) is overwritten by that history's own files.
    let uring = |name: &str, path: &str| {
        format!("[[volume]]\nname='{name}'\nbackend='uring'\nsize='1MiB'\npath='{path}'\n")
    };
    for (two, want) in [
        (
            format!("{}{}", uring("a", "/d/v.img"), uring("b", "/d/v.img")),
            "same backing file",
        ),
        (
            format!("{}{}", uring("a", "/d/v.img"), uring("b", "/d/./v.img")),
            "same backing file",
        ),
        (
            format!(
                "{}[volume.cdp]\ndir='/j/a'\n{}",
                uring("a", "/d/a.img"),
                uring("b", "/j/a/base.img")
            ),
            "in the cdp.dir",
        ),
        (
            format!("{}[volume.cdp]\ndir='/j/a'\n", uring("a", "/j/a/base.img")),
            "in the cdp.dir",
        ),
    ] {
        let e = Config::from_toml(&two).expect_err(&two).to_string();
        assert!(e.contains(want), "{two}: {e}");
    }
    Config::from_toml(&format!(
        "{}{}",
        uring("a", "/d/a.img"),
        uring("b", "/d/b.img")
    ))
    .unwrap();
}

#[test]
fn two_iscsi_targets_whose_reservation_files_would_be_one_are_refused_with_a_state_dir() {
    // `[iscsi] state_dir` keeps each LUN's APTPL state in `<IQN, other characters as _>-lun<N>.pr`:
    // two names that differ only where `_` stands would share one file, each writing over
    // the other's reservations, and the next start would refuse the other's file.
    let vols = "[[volume]]\nname='a_b'\nbackend='malloc'\nsize='1MiB'\n[[volume]]\nname='a:b'\nbackend='malloc'\nsize='1MiB'\n";
    let targets = "[[iscsi.target]]\niqn='iqn.2026-11.io.x:t'\nluns=['a_b']\n[[iscsi.target]]\niqn='iqn.2026-11.io.x_t'\nluns=['a:b']\n";
    for text in [
        format!("[iscsi]\nstate_dir='/s'\n{vols}"),
        format!("[iscsi]\nstate_dir='/s'\n{targets}{vols}"),
    ] {
        let e = Config::from_toml(&text).expect_err(&text).to_string();
        assert!(e.contains("reservation state file"), "{text}: {e}");
    }
    // Without a state directory there are no files.
    Config::from_toml(vols).unwrap();
    Config::from_toml(&format!("{targets}{vols}")).unwrap();
}

#[test]
fn two_nvmf_subsystems_whose_reservation_files_would_be_one_are_refused_with_a_state_dir() {
    // `[nvmf] state_dir` keeps a subsystem's reservations in `resv-<crc32c of its NQN>.json`:
    // two NQNs of one CRC (made so: a CRC is linear) would share one file, and the next start
    // would refuse the other's.
    let (a, b) = (
        "nqn.2026-11.io.test:aaaaaaaaaa",
        "nqn.2026-11.io.test:bbf`mbkaaa",
    );
    assert_eq!(
        crate::checksum::crc32c(a.as_bytes()),
        crate::checksum::crc32c(b.as_bytes())
    );
    let body = format!(
        "[[nvmf.subsystem]]\nnqn='{a}'\nnamespaces=['v']\n[[nvmf.subsystem]]\nnqn='{b}'\nnamespaces=['w']\n[[volume]]\nname='v'\nbackend='malloc'\nsize='1MiB'\n[[volume]]\nname='w'\nbackend='malloc'\nsize='1MiB'\n"
    );
    let text = format!("[nvmf]\nstate_dir='/s'\n{body}");
    let e = Config::from_toml(&text).expect_err(&text).to_string();
    assert!(e.contains("reservation state file"), "{text}: {e}");
    Config::from_toml(&body).unwrap();
}

#[test]
fn a_backing_file_that_is_a_state_file_of_the_daemon_is_refused() {
    // The volume's blocks would be the daemon's state (a reservation file, a replica state),
    // or the daemon's state the volume's blocks. Other files in a state directory are fine
    // (README: the volumes' files in the mirror's state_dir).
    let crc = crate::checksum::crc32c(b"nqn.2026-11.io.twinblk:v");
    let vol =
        |path: &str| format!("[[volume]]\nname='v'\nbackend='uring'\nsize='1MiB'\npath='{path}'\n");
    for text in [
        format!(
            "[nvmf]\nstate_dir='/s'\n{}",
            vol(&format!("/s/resv-{crc:08x}.json"))
        ),
        format!(
            "[nvmf]\nstate_dir='/s/'\n{}",
            vol(&format!("/s/./resv-{crc:08x}.json.tmp"))
        ),
        format!(
            "[iscsi]\nstate_dir='/s'\n{}",
            vol("/s/iqn.2026-11.io.twinblk_v-lun0.pr")
        ),
    ] {
        let e = Config::from_toml(&text).expect_err(&text).to_string();
        assert!(e.contains("state file"), "{text}: {e}");
    }
    Config::from_toml(&format!("[nvmf]\nstate_dir='/s'\n{}", vol("/s/v.img"))).unwrap();
}

#[test]
fn names_that_differ_only_in_case_are_refused() {
    // iSCSI names are case-insensitive (RFC 3720 3.2.6.1: stringprep folds them to lower
    // case), and a volume's name is its default target's: `vol` and `VOL` would be one target
    // to an initiator (and one state file on a case-insensitive filesystem).
    let vol = |n: &str| format!("[[volume]]\nname='{n}'\nbackend='malloc'\nsize='1MiB'\n");
    let e = Config::from_toml(&format!("{}{}", vol("vol"), vol("VOL"))).unwrap_err();
    assert!(e.to_string().contains("only in case"), "{e}");
    let t = |iqn: &str, lun: &str| format!("[[iscsi.target]]\niqn='{iqn}'\nluns=['{lun}']\n");
    let text = format!(
        "{}{}{}{}",
        t("iqn.2026-11.io.x:t", "a"),
        t("iqn.2026-11.io.x:T", "b"),
        vol("a"),
        vol("b")
    );
    let e = Config::from_toml(&text).unwrap_err();
    assert!(e.to_string().contains("only in case"), "{e}");
}
