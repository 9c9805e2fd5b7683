//! The OCI runtime spec of an instance, built from the image config and the SLA. Pure.

use crate::InstanceSpec;
use crate::image::ProcessConfig;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, ProcessBuilder, RootBuilder, Spec,
};

/// CFS period used for CPU limits.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Builds the spec: argv from the SLA `cmd` (else the image's entrypoint + cmd), the image's
/// environment plus `HOSTNAME` and the SLA's, memory and CPU limits, the instance's network
/// namespace, and a cgroup under `/oak/<id>`.
pub fn build(spec: &InstanceSpec, image: &ProcessConfig) -> Result<Spec, String> {
    let args: Vec<String> = if spec.cmd.is_empty() {
        image.entrypoint.clone().unwrap_or_default().into_iter().chain(image.cmd.clone().unwrap_or_default()).collect()
    } else {
        spec.cmd.clone()
    };
    if args.is_empty() {
        return Err("neither the SLA (cmd) nor the image says what to run".into());
    }
    let mut env: Vec<String> = image
        .env
        .clone()
        .unwrap_or_else(|| vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]);
    env.push(format!("HOSTNAME={}", spec.hostname));
    env.extend(spec.env.iter().cloned());

    let mut base = Spec::default();
    let process = ProcessBuilder::default()
        .args(args)
        .env(env)
        .cwd(image.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()))
        .capabilities(base.process().as_ref().and_then(|p| p.capabilities().clone()).unwrap_or_default())
        .rlimits(base.process().as_ref().and_then(|p| p.rlimits().clone()).unwrap_or_default())
        .no_new_privileges(true)
        .build()
        .map_err(|e| e.to_string())?;

    let mut resources = LinuxResourcesBuilder::default();
    if spec.memory_mb > 0 {
        let bytes = (spec.memory_mb * 1024 * 1024) as i64;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build().map_err(|e| e.to_string())?);
    }
    if spec.millicpu > 0 {
        let quota = (spec.millicpu * CPU_PERIOD_US / 1000).max(1000) as i64;
        resources = resources
            .cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build().map_err(|e| e.to_string())?);
    }
    let default_linux = base.linux().clone().unwrap_or_default();
    let namespaces: Vec<LinuxNamespace> = default_linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .chain(std::iter::once(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(crate::netns::path(&spec.netns))
                .build()
                .map_err(|e| e.to_string())?,
        ))
        .collect();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(|e| e.to_string())?)
        .cgroups_path(format!("/oak/{}", spec.id));
    if let Some(m) = default_linux.masked_paths() {
        linux = linux.masked_paths(m.clone());
    }
    if let Some(r) = default_linux.readonly_paths() {
        linux = linux.readonly_paths(r.clone());
    }
    base.set_process(Some(process));
    base.set_hostname(Some(spec.hostname.clone()));
    base.set_root(Some(RootBuilder::default().path("rootfs").readonly(false).build().map_err(|e| e.to_string())?));
    base.set_linux(Some(linux.build().map_err(|e| e.to_string())?));
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inst() -> InstanceSpec {
        InstanceSpec {
            id: "svc-0".into(),
            image: "x".into(),
            cmd: vec![],
            env: vec!["A=1".into()],
            hostname: "instance-0".into(),
            memory_mb: 64,
            millicpu: 500,
            log_path: "/tmp/x.log".into(),
            netns: "oak-svc-0".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn limits_env_args_and_netns() {
        let img = ProcessConfig {
            env: Some(vec!["PATH=/bin".into()]),
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: Some(vec!["-c".into(), "true".into()]),
            working_dir: None,
        };
        let s = build(&inst(), &img).unwrap_or_else(|e| panic!("{e}"));
        let p = s.process().clone().unwrap_or_default();
        assert_eq!(p.args().clone().unwrap_or_default(), ["/bin/sh", "-c", "true"]);
        assert_eq!(p.env().clone().unwrap_or_default(), ["PATH=/bin", "HOSTNAME=instance-0", "A=1"]);
        let linux = s.linux().clone().unwrap_or_default();
        let r = linux.resources().clone().unwrap_or_default();
        assert_eq!(r.memory().and_then(|m| m.limit()), Some(64 * 1024 * 1024));
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(50_000));
        let net =
            linux.namespaces().clone().unwrap_or_default().into_iter().find(|n| n.typ() == LinuxNamespaceType::Network);
        assert_eq!(
            net.and_then(|n| n.path().clone()).map(|p| p.display().to_string()).as_deref(),
            Some("/run/netns/oak-svc-0")
        );
        assert_eq!(s.hostname().as_deref(), Some("instance-0"));

        let mut with_cmd = inst();
        with_cmd.cmd = vec!["echo".into(), "hi".into()];
        let s = build(&with_cmd, &img).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.process().clone().unwrap_or_default().args().clone().unwrap_or_default(), ["echo", "hi"]);
        assert!(build(&inst(), &ProcessConfig::default()).is_err(), "nothing to run");
    }
}
