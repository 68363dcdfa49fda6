package cluster

import "fmt"

// Addresses inside the cluster. The pod range is the CNI bridge's; the
// first service IP is the kubernetes Service, which the API server's
// certificate names.
const (
	PodCIDR        = "10.244.0.0/24"
	PodGateway     = "10.244.0.1" // the bridge's address on the host, reachable from every pod
	ServiceCIDR    = "10.96.0.0/24"
	firstServiceIP = "10.96.0.1"
	// Bridge is the CNI bridge's interface name (15 characters at most).
	Bridge = "klock-e2e0"
	// NodeName is the one node's name.
	NodeName = "klock-e2e"
	// SandboxImage is the pause image containerd starts each pod with; the
	// harness builds it and imports it under this name.
	SandboxImage = "registry.k8s.io/pause:3.10.1"
)

// containerdConfig keeps containerd's files under dir. restrict_oom_score_adj:
// root here lacks CAP_SYS_RESOURCE, and without it every sandbox fails
// with "can't get final child's PID from pipe: EOF".
func containerdConfig(dir string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
`, dir+"/containerd/root", dir+"/containerd/state", dir+"/containerd.sock", dir+"/containerd.ttrpc.sock",
		dir+"/containerd/opt", SandboxImage, dir+"/cni")
}

// bridgeConflist is the pod network: a bridge the host is the gateway of,
// addresses from host-local (its state under dir), no masquerading (pods
// only talk to the host and to each other).
func bridgeConflist(dir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "klock-e2e",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": %q,
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
`, Bridge, dir+"/cni-ipam", PodCIDR, PodGateway)
}

const loopbackConf = `{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}
`

// kubeletConfig: cgroup v1 with the cgroupfs driver (failCgroupV1: the
// kubelet refuses v1 by default), authentication and authorization by the
// API server, relaxed eviction so a busy disk does not evict the tests'
// pods, and a short sync period so that the webhook's Secret, filled after
// its pod started, reaches its volume within seconds.
func kubeletConfig(dir, caFile, certFile, keyFile string, port int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%[1]s/containerd.sock
podLogsDir: %[1]s/pod-logs
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[2]s
authorization:
  mode: Webhook
tlsCertFile: %[3]s
tlsPrivateKeyFile: %[4]s
port: %[5]d
readOnlyPort: 0
healthzPort: 0
syncFrequency: 5s
fileCheckFrequency: 5s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
serializeImagePulls: false
resolvConf: /etc/resolv.conf
`, dir, caFile, certFile, keyFile, port)
}

// kubeProxyConfig: iptables mode, which lets pods reach the API server
// through the kubernetes Service and the API server reach the webhook's
// Service. Zero conntrack settings leave the host's alone;
// localhostNodePorts false leaves route_localnet alone.
func kubeProxyConfig(kubeconfig string, healthzPort, metricsPort int) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
`, kubeconfig, PodCIDR, NodeName, healthzPort, metricsPort)
}
