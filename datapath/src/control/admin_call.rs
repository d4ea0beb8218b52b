//! The dispatcher of the run-time change methods (docs/control.md, "Run-time changes"): each
//! method of [`super::admin`] (volumes, NBD exports) and [`super::admin_front`] (NVMe
//! subsystems, iSCSI targets) and [`super::cdp_admin`] (CDP switched on and off) runs under
//! the one admin lock, so changes never interleave; only `cdp_enable`'s wait for its
//! catch-up, after its change is made, runs without it.

use super::ControlCx;
use super::admin::{self, AdminState, Error, bad};
use super::admin_front;
use serde_json::{Value, json};

/// The run-time change methods ([`super::admin`] and [`super::admin_front`]); `None` for any
/// other method.
pub fn call(method: &str, params: Option<&Value>, cx: &ControlCx) -> Option<Result<Value, Error>> {
    type Method = fn(&Value, &ControlCx, &mut AdminState) -> Result<Value, Error>;
    if method == "cdp_enable" {
        let p = match object(params) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        // The change under the lock; its answer waits for the catch-up without it, so the
        // other changes are served meanwhile (and not made after their clients gave up).
        let enabled = {
            let mut st = cx.admin.lock().unwrap_or_else(|e| e.into_inner());
            super::cdp_admin::cdp_enable(&p, cx, &mut st)
        };
        return Some(enabled.and_then(super::cdp_admin::Enabled::answer));
    }
    let f: Method = match method {
        "volume_create" => admin::volume_create,
        "volume_delete" => admin::volume_delete,
        "nbd_export_add" => admin::nbd_export_add,
        "nbd_export_remove" => admin::nbd_export_remove,
        "nvmf_subsystem_add" => admin_front::nvmf_subsystem_add,
        "nvmf_subsystem_remove" => admin_front::nvmf_subsystem_remove,
        "nvmf_namespace_add" => admin_front::nvmf_namespace_add,
        "nvmf_namespace_remove" => admin_front::nvmf_namespace_remove,
        "nvmf_host_allow" => admin_front::nvmf_host_allow,
        "nvmf_host_disallow" => admin_front::nvmf_host_disallow,
        "iscsi_target_add" => admin_front::iscsi_target_add,
        "iscsi_target_remove" => admin_front::iscsi_target_remove,
        "iscsi_lun_add" => admin_front::iscsi_lun_add,
        "iscsi_lun_remove" => admin_front::iscsi_lun_remove,
        "cdp_disable" => super::cdp_admin::cdp_disable,
        _ => return None,
    };
    let p = match object(params) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    // One change at a time; a panic in an earlier change left nothing half done that the
    // state records (it is updated last), so a poisoned lock is taken over.
    let mut st = cx.admin.lock().unwrap_or_else(|e| e.into_inner());
    Some(f(&p, cx, &mut st))
}

/// The params as an object (none: an empty one).
fn object(params: Option<&Value>) -> Result<Value, Error> {
    match params {
        None | Some(Value::Null) => Ok(json!({})),
        Some(p @ Value::Object(_)) => Ok(p.clone()),
        Some(_) => Err(bad("params must be an object")),
    }
}
