package realnode

import (
	"fmt"
	"strings"
)

// containerdConfig is containerd v2's configuration (version 3) for the
// node: everything under the harness directory, the CRI with the recipe of
// verified-here.md (restrict_oom_score_adj: this machine lacks
// CAP_SYS_RESOURCE; netns under the state dir, not /run/netns; cgroupfs),
// the pinned local pause image and the node's CNI directories.
func containerdConfig(dir, socket, runc string) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return strings.TrimLeft(fmt.Sprintf(`
version = 3
root = %[1]s
state = %[2]s
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]s

[ttrpc]
  address = %[4]s

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = %[5]s
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %[6]s
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = %[7]s
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      # The pod's lo without the CNI "loopback" plugin: eni-cni is the
      # only plugin the node has (else every sandbox fails: failed to
      # find plugin "loopback").
      use_internal_loopback = true
      bin_dirs = [%[8]s]
      conf_dir = %[9]s
`, q(dir+"/containerd/root"), q(dir+"/containerd/state"), q(socket), q(socket+".ttrpc"), q(dir+"/containerd/opt"),
		q(PauseImage), q(runc), q(CNIBinDir), q(CNIConfDir)), "\n")
}

// kubeletConfig is the KubeletConfiguration of verified-here.md:
// failCgroupV1 (the hybrid layout is cgroup v1 to the kubelet), cgroupfs
// (PID 1 is not systemd), no iptables chains of its own, the kernel
// defaults it may change (saved and restored by the harness), x509 +
// webhook authentication and webhook authorization, its files under the
// harness directory, free ports.
func kubeletConfig(o kubeletOpts) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
makeIPTablesUtilChains: false
protectKernelDefaults: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s
imageServiceEndpoint: unix://%[1]s
address: %[2]s
port: %[3]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[4]d
podLogsDir: %[5]s
volumePluginDir: %[6]s
staticPodPath: ""
clusterDNS: [%[7]q]
clusterDomain: cluster.local
resolvConf: %[8]s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[9]s
authorization:
  mode: Webhook
serializeImagePulls: false
imageMinimumGCAge: 24h
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
maxPods: 60
shutdownGracePeriod: 0s
registerNode: true
`, o.runtimeSocket, NodeIP, o.port, o.healthzPort, o.podLogsDir, o.volumePluginDir, ClusterDNS, o.resolvConf, o.clientCA)
}

type kubeletOpts struct {
	runtimeSocket, podLogsDir, volumePluginDir, resolvConf, clientCA string
	port, healthzPort                                                int
}

// kubeProxyConfig runs kube-proxy in nftables mode (its own nftables
// tables "kube-proxy" in the ip and ip6 families, removed at teardown),
// leaving conntrack's sysctls alone (maxPerCore 0, timeouts 0) and
// NodePorts on the node address only.
func kubeProxyConfig(kubeconfig string, healthzPort, metricsPort int) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: %[1]s
clientConnection:
  kubeconfig: %[2]s
clusterCIDR: %[3]s
bindAddress: %[4]s
healthzBindAddress: 127.0.0.1:%[5]d
metricsBindAddress: 127.0.0.1:%[6]d
nodePortAddresses: [%[4]s/32]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, NodeName, kubeconfig, VPCCIDR, NodeIP, healthzPort, metricsPort)
}
