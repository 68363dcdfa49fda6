// Package cluster runs a real single-node Kubernetes cluster on this host
// for klock's end-to-end tests: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd, the kubelet and
// kube-proxy, all with their files under one temporary directory, and
// tears it down again, host-global leftovers included (see cleanHost).
//
// It needs root, the Debian packages `make e2e` installs (containerd,
// runc, containernetworking-plugins, iptables, conntrack) and the
// Kubernetes binaries it builds into bin/k8s/<version>.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Cluster is a running cluster.
type Cluster struct {
	// Dir holds every file of the cluster; removed by Stop.
	Dir string
	// Logs holds each component's log; kept after Stop.
	Logs string
	// HostIP is the node's address, which the API server advertises.
	HostIP string
	// Kubeconfig and Config authenticate as a cluster administrator.
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface

	bin       string
	nodeFiles nodeFiles
	phases    []phase
	procs     []*process
	logf      func(format string, args ...any)
	phaseFrom time.Time
}

// Options say where the binaries are and where to report.
type Options struct {
	// Bin is the directory with etcd, kube-apiserver,
	// kube-controller-manager, kube-scheduler, kubelet and kube-proxy.
	Bin string
	// Logs is where each component's log goes.
	Logs string
	// Logf reports progress and phase timings.
	Logf func(format string, args ...any)
	// Since and FirstPhase name a phase that ended when Start is called,
	// for the timings; optional.
	Since      time.Time
	FirstPhase string
}

// DirPrefix starts the name of every cluster's directory in os.TempDir.
const DirPrefix = "klock-e2e-"

// Start brings the cluster up, up to a Ready node. On error, what was
// started is torn down again.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(o.Bin, b)); err != nil {
			return nil, fmt.Errorf("%s is missing from %s: run the tests with make e2e, which builds it", b, o.Bin)
		}
	}
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack", "/usr/lib/cni/bridge"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed: run the tests with make e2e, which installs it (apt-get install containerd runc containernetworking-plugins iptables conntrack)", tool)
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the end-to-end cluster needs root: containerd, the kubelet and kube-proxy change the host's mounts, network and cgroups")
	}
	dir, err := os.MkdirTemp("", DirPrefix)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Dir: dir, Logs: o.Logs, bin: o.Bin, logf: o.Logf, phaseFrom: o.Since}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	if o.FirstPhase != "" {
		c.Phase(o.FirstPhase)
	}
	c.phaseFrom = time.Now()
	defer func() {
		if err != nil {
			if serr := c.Stop(context.Background()); serr != nil {
				c.logf("teardown after the failed start: %v", serr)
			}
			c = nil
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return c, err
	}
	if err := os.MkdirAll(c.Logs, 0o755); err != nil {
		return c, err
	}
	if err := snapshotHost(dir); err != nil {
		return c, err
	}
	if c.HostIP, err = hostIP(); err != nil {
		return c, err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return c, err
	}
	c.Phase("control plane (etcd, kube-apiserver) ready")
	if err := c.startNode(ctx); err != nil {
		return c, err
	}
	c.Phase("node Ready (containerd, kubelet, kube-proxy, controller manager, scheduler)")
	return c, nil
}

type phase struct {
	what string
	took time.Duration
}

// Phase reports how long the phase that just ended took, and starts the
// next one.
func (c *Cluster) Phase(what string) {
	now := time.Now()
	c.phases = append(c.phases, phase{what, now.Sub(c.phaseFrom)})
	c.logf("PHASE %-75s %6.1fs", what, now.Sub(c.phaseFrom).Seconds())
	c.phaseFrom = now
}

// Summary reports every phase's time, and their total.
func (c *Cluster) Summary() {
	var total time.Duration
	c.logf("phase timings:")
	for _, p := range c.phases {
		c.logf("  %-75s %6.1fs", p.what, p.took.Seconds())
		total += p.took
	}
	c.logf("  %-75s %6.1fs", "total", total.Seconds())
}

// CleanStale cleans up after clusters whose test process died before its
// teardown (SIGKILL, a crash): their directories in os.TempDir, with what
// they left on the host. kubeProxy is the kube-proxy binary, for its
// --cleanup.
func CleanStale(kubeProxy string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), DirPrefix+"*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue // not a cluster's directory (the logs, the binaries)
		}
		if pid, err := strconv.Atoi(string(data)); err == nil && syscall.Kill(pid, 0) == nil {
			continue // its test process is still running
		}
		logf("cleaning up after an interrupted run in %s", dir)
		if err := errors.Join(cleanHost(dir, kubeProxy, Bridge), os.RemoveAll(dir)); err != nil {
			logf("cleaning up %s: %v", dir, err)
		}
	}
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	pki, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	saPub, saKey, err := pki.serviceAccountKeys()
	if err != nil {
		return err
	}
	serveCert, serveKey, err := pki.issue("apiserver", "kube-apiserver", nil,
		"127.0.0.1", c.HostIP, firstServiceIP, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
	if err != nil {
		return err
	}
	kubeletClientCert, kubeletClientKey, err := pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	if err := c.start("etcd", "--name", "e2e", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e2e="+peerURL, "--listen-metrics-urls", "",
		"--unsafe-no-fsync", "--quota-backend-bytes", strconv.Itoa(2<<30)); err != nil {
		return err
	}
	apiPort := ports[2]
	if err := c.start("kube-apiserver",
		"--etcd-servers", etcdURL,
		"--bind-address", "0.0.0.0", "--advertise-address", c.HostIP, "--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", filepath.Join(c.Dir, "apiserver"),
		"--tls-cert-file", serveCert, "--tls-private-key-file", serveKey,
		"--client-ca-file", pki.CAFile(),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saPub, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--kubelet-client-certificate", kubeletClientCert, "--kubelet-client-key", kubeletClientKey,
		"--kubelet-preferred-address-types", "InternalIP",
		"--allow-privileged=true", "--profiling=false"); err != nil {
		return err
	}

	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	kubeconfig := func(name, cn string, orgs ...string) (string, error) {
		cert, key, err := pki.issue(name, cn, orgs)
		if err != nil {
			return "", err
		}
		path := filepath.Join(c.Dir, name+".kubeconfig")
		return path, writeKubeconfig(path, server, pki.CAFile(), cert, key)
	}
	if c.Kubeconfig, err = kubeconfig("admin", "klock-e2e-admin", "system:masters"); err != nil {
		return err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return err
	}
	c.Config.QPS, c.Config.Burst = 50, 100
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver to be ready", time.Minute, func() error {
		_, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return err
	}

	// The node's files, issued now that the PKI is at hand.
	c.nodeFiles = nodeFiles{ca: pki.CAFile(), saKey: saKey}
	if c.nodeFiles.kcm, err = kubeconfig("controller-manager", "system:kube-controller-manager"); err != nil {
		return err
	}
	if c.nodeFiles.scheduler, err = kubeconfig("scheduler", "system:kube-scheduler"); err != nil {
		return err
	}
	if c.nodeFiles.kubelet, err = kubeconfig("kubelet", "system:node:"+NodeName, "system:nodes"); err != nil {
		return err
	}
	if c.nodeFiles.proxy, err = kubeconfig("kube-proxy", "system:kube-proxy"); err != nil {
		return err
	}
	c.nodeFiles.kubeletCert, c.nodeFiles.kubeletKey, err = pki.issue("kubelet-serving", "system:node:"+NodeName, []string{"system:nodes"}, c.HostIP, NodeName)
	return err
}

// nodeFiles are the credentials the node's components start with.
type nodeFiles struct {
	ca, saKey                      string
	kcm, scheduler, kubelet, proxy string // kubeconfigs
	kubeletCert, kubeletKey        string
}

func (c *Cluster) startNode(ctx context.Context) error {
	f := c.nodeFiles
	if err := c.start("kube-controller-manager", "--kubeconfig", f.kcm,
		"--service-account-private-key-file", f.saKey, "--root-ca-file", f.ca,
		"--use-service-account-credentials=true", "--leader-elect=false", "--secure-port=0",
		"--cluster-cidr", PodCIDR, "--service-cluster-ip-range", ServiceCIDR); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", "--kubeconfig", f.scheduler, "--leader-elect=false", "--secure-port=0"); err != nil {
		return err
	}

	for _, d := range []string{"cni", "containerd", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"containerd.toml":        containerdConfig(c.Dir),
		"cni/10-bridge.conflist": bridgeConflist(c.Dir),
		"cni/99-loopback.conf":   loopbackConf,
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	files["kubelet-config.yaml"] = kubeletConfig(c.Dir, f.ca, f.kubeletCert, f.kubeletKey, ports[0])
	files["kube-proxy-config.yaml"] = kubeProxyConfig(f.proxy, ports[1], ports[2])
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := c.startPath("containerd", "containerd", "--config", filepath.Join(c.Dir, "containerd.toml")); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "containerd to serve", 30*time.Second, func() error {
		return c.ctr(ctx, "version")
	}); err != nil {
		return err
	}
	if err := c.start("kubelet", "--config", filepath.Join(c.Dir, "kubelet-config.yaml"),
		"--kubeconfig", f.kubelet, "--hostname-override", NodeName, "--node-ip", c.HostIP,
		"--root-dir", filepath.Join(c.Dir, "kubelet"), "--cert-dir", filepath.Join(c.Dir, "kubelet", "pki")); err != nil {
		return err
	}
	if err := c.start("kube-proxy", "--config", filepath.Join(c.Dir, "kube-proxy-config.yaml")); err != nil {
		return err
	}
	return c.waitFor(ctx, "the node to be Ready", 2*time.Minute, func() error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return c.defaultServiceAccount(ctx)
			}
		}
		return fmt.Errorf("node %s is not Ready: %v", NodeName, node.Status.Conditions)
	})
}

// defaultServiceAccount reports whether the controller manager is up: the
// default namespace's service account exists and can get tokens.
func (c *Cluster) defaultServiceAccount(ctx context.Context) error {
	_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
	return err
}

// Stop tears the cluster down: pods first, so that containerd runs their
// CNI teardown, then each component, then what they left on the host; and
// removes Dir. It goes on past errors and returns them all.
func (c *Cluster) Stop(ctx context.Context) error {
	var errs []error
	if c.Client != nil && c.running("kubelet") {
		c.stopProc("kube-controller-manager") // no new pods from here on
		c.stopProc("kube-scheduler")
		errs = append(errs, c.drain(ctx))
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	errs = append(errs, cleanHost(c.Dir, filepath.Join(c.bin, "kube-proxy"), Bridge))
	errs = append(errs, os.RemoveAll(c.Dir))
	if left := Leftovers(c.Dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("left on the host after teardown: %s", strings.Join(left, ", ")))
	}
	c.Phase("teardown")
	return errors.Join(errs...)
}

// drain deletes every pod and waits until the kubelet has stopped them all,
// which stops their sandboxes and frees their network namespaces.
func (c *Cluster) drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	pods := c.Client.CoreV1().Pods(metav1.NamespaceAll)
	list, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing the pods to drain: %w", err)
	}
	grace := int64(2)
	for _, p := range list.Items {
		_ = c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	}
	return c.waitFor(ctx, "the pods to be gone", 80*time.Second, func() error {
		list, err := pods.List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if n := len(list.Items); n > 0 {
			return fmt.Errorf("%d pods left, such as %s/%s", n, list.Items[0].Namespace, list.Items[0].Name)
		}
		return nil
	})
}

// process is a component started by the cluster.
type process struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool // by stop, not on its own
}

func (c *Cluster) start(name string, args ...string) error {
	return c.startPath(name, filepath.Join(c.bin, name), args...)
}

func (c *Cluster) startPath(name, path string, args ...string) error {
	log, err := os.Create(filepath.Join(c.Logs, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that ^C reaches only the test binary, which
	// tears down in order; and SIGKILL if the test binary dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return nil
}

func (c *Cluster) running(name string) bool {
	for _, p := range c.procs {
		if p.name == name {
			select {
			case <-p.done:
				return false
			default:
				return true
			}
		}
	}
	return false
}

func (c *Cluster) stopProc(name string) {
	for _, p := range c.procs {
		if p.name == name {
			p.stop()
		}
	}
}

// stop sends SIGTERM, and SIGKILL after a few seconds (etcd and the API
// server may not exit on SIGTERM while clients hold connections).
func (p *process) stop() {
	p.stopped = true
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// ctr runs containerd's ctr in the Kubernetes namespace.
func (c *Cluster) ctr(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", filepath.Join(c.Dir, "containerd.sock"), "--namespace", "k8s.io"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// waitFor polls cond every 250ms until it returns nil, and returns its last
// error, with what was awaited and where the logs are, after timeout.
func (c *Cluster) waitFor(ctx context.Context, what string, timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		for _, p := range c.procs {
			if p.stopped {
				continue
			}
			select {
			case <-p.done:
				return fmt.Errorf("waiting for %s: %s exited (%v): see %s", what, p.name, p.cmd.ProcessState, filepath.Join(c.Logs, p.name+".log"))
			default:
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("stopped waiting for %s: %w", what, ctx.Err())
			}
			return fmt.Errorf("timed out after %s waiting for %s: %v (component logs in %s)", timeout, what, err, c.Logs)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, server, ca, cert, key string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: ca}
	cfg.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e"}
	cfg.CurrentContext = "e2e"
	return clientcmd.WriteToFile(*cfg, path)
}

// hostIP is the IPv4 address of the interface the default route leaves
// by: the API server and the kubelet refuse loopback.
func hostIP() (string, error) {
	routes, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(routes), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] != "00000000" { // the default route
			continue
		}
		iface, err := net.InterfaceByName(f[0])
		if err != nil {
			return "", err
		}
		addrs, err := iface.Addrs()
		if err != nil {
			return "", err
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				return ipn.IP.String(), nil
			}
		}
	}
	return "", errors.New("no IPv4 default route: the node needs a non-loopback address for the API server and the kubelet")
}

// freePorts returns n distinct free TCP ports.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []io.Closer
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
