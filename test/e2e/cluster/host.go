package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Paths outside the cluster's directory that containerd, the CNI plugins
// and the kubelet use whatever they are told. Teardown removes what of
// them a run created, and leaves what was there before it.
var (
	hostDirs = []string{
		"/run/containerd/s", "/run/containerd/runc", "/run/containerd/fifo",
		"/run/containerd", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet",
	}
	// Removed when they did not exist before and are empty.
	hostEmptyDirs  = []string{netnsDir, containerLogs}
	netnsDir       = "/var/run/netns"
	containerLogs  = "/var/log/containers"
	cgroupRoot     = "/sys/fs/cgroup"
	cgroupChildren = []string{"kubepods", "kubepods.slice"}
)

// hostState is what existed before the cluster started, saved in the
// cluster's directory so that a later run can clean up after one that was
// killed before its teardown.
type hostState struct {
	Existing []string          `json:"existing"` // hostDirs and cgroups present before
	Netns    []string          `json:"netns"`
	Sysctls  map[string]string `json:"sysctls"` // path under /proc/sys → value before
}

// Kernel settings the components change, restored at teardown: the
// kubelet's kernel tunables (it sets them unless protectKernelDefaults,
// which instead refuses to start when they differ), kube-proxy's conntrack
// settings, and forwarding, which the CNI bridge turns on.
var sysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
}

const stateFile = "host-state.json"

func snapshotHost(dir string) error {
	var s hostState
	for _, p := range append(append(hostDirs, hostEmptyDirs...), kubepodsCgroups()...) {
		if _, err := os.Stat(p); err == nil {
			s.Existing = append(s.Existing, p)
		}
	}
	s.Netns = netnsNames()
	s.Sysctls = map[string]string{}
	for _, k := range sysctls {
		if v, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			s.Sysctls[k] = strings.TrimSpace(string(v))
		}
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, stateFile), data, 0o644)
}

func netnsNames() []string {
	entries, _ := os.ReadDir(netnsDir)
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "cni-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// kubepodsCgroups are the kubelet's cgroups (cgroupfs driver), one per
// controller hierarchy.
func kubepodsCgroups() []string {
	var paths []string
	for _, child := range cgroupChildren {
		m, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", child))
		paths = append(paths, m...)
	}
	return paths
}

// cleanHost undoes what a cluster in dir left on the host: processes still
// running from it (container shims and their containers), mounts under
// it, network namespaces, the CNI bridge, kube-proxy's iptables chains,
// container log links, the kubelet's cgroups and the host paths in
// hostDirs that did not exist before. It goes on past errors and returns
// them all.
func cleanHost(dir, kubeProxy, bridge string) error {
	var errs []error
	var s hostState
	if data, err := os.ReadFile(filepath.Join(dir, stateFile)); err == nil {
		_ = json.Unmarshal(data, &s)
	}
	existed := map[string]bool{}
	for _, p := range append(s.Existing, s.Netns...) {
		existed[p] = true
	}

	errs = append(errs, killProcessesUnder(dir))
	errs = append(errs, unmountUnder(dir))

	for _, n := range netnsNames() {
		if existed[n] {
			continue
		}
		p := filepath.Join(netnsDir, n)
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	if _, err := os.Stat("/sys/class/net/" + bridge); err == nil {
		if out, err := exec.Command("ip", "link", "delete", bridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip link delete %s: %v: %s", bridge, err, out))
		}
	}
	errs = append(errs, cleanIptables(kubeProxy))

	// The kubelet's links to the logs of its containers.
	links, _ := filepath.Glob(filepath.Join(containerLogs, "*.log"))
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(l)
		}
	}
	for _, cg := range kubepodsCgroups() {
		if !existed[cg] {
			killCgroup(cg)
			errs = append(errs, removeCgroup(cg))
		}
	}
	for _, p := range hostDirs {
		if !existed[p] {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range hostEmptyDirs {
		if !existed[p] {
			_ = os.Remove(p) // fails if not empty: then not ours alone
		}
	}
	for k, v := range s.Sysctls {
		path := filepath.Join("/proc/sys", k)
		if cur, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restoring %s to %s: %w", k, v, err))
			}
		}
	}
	return errors.Join(errs...)
}

// killProcessesUnder kills every process whose command line names dir:
// the container shims, started with containerd's address under dir, outlive
// containerd, and take the containers with them.
func killProcessesUnder(dir string) error {
	for attempt := 0; attempt < 50; attempt++ {
		pids := processesNaming(dir)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("processes started from %s survived SIGKILL: %v", dir, processesNaming(dir))
}

func processesNaming(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount point under dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// The kubelet and kube-proxy add chains for both IP families, in
// whichever backend they find in use.
var iptablesCommands = []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"}

// cleanIptables removes kube-proxy's rules and chains, with kube-proxy's
// own --cleanup, then any KUBE- chain left in either iptables backend.
func cleanIptables(kubeProxy string) error {
	if kubeProxy != "" {
		if _, err := os.Stat(kubeProxy); err == nil {
			_ = exec.Command(kubeProxy, "--cleanup").Run() // best effort; checked below
		}
	}
	var errs []error
	for _, ipt := range iptablesCommands {
		if _, err := exec.LookPath(ipt); err != nil {
			continue
		}
		for _, table := range tablesOf(ipt) {
			for _, chain := range kubeChains(ipt, table) {
				_ = exec.Command(ipt, "-t", table, "-F", chain).Run()
			}
			// Rules in built-in chains jump to KUBE- chains: delete those
			// rules, then the emptied chains.
			for _, rule := range jumpRules(ipt, table) {
				_ = exec.Command(ipt, append([]string{"-t", table, "-D"}, rule...)...).Run()
			}
			for _, chain := range kubeChains(ipt, table) {
				if out, err := exec.Command(ipt, "-t", table, "-X", chain).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s -X %s: %v: %s", ipt, table, chain, err, out))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// tablesOf are the tables to look for KUBE- chains in with ipt. For the
// legacy backend, only the tables the kernel has: listing one would create
// it.
func tablesOf(ipt string) []string {
	if !strings.HasSuffix(ipt, "-legacy") {
		return []string{"filter", "nat", "mangle"}
	}
	names := "/proc/net/ip_tables_names"
	if strings.HasPrefix(ipt, "ip6") {
		names = "/proc/net/ip6_tables_names"
	}
	data, _ := os.ReadFile(names)
	return strings.Fields(string(data))
}

func kubeChains(ipt, table string) []string {
	out, _ := exec.Command(ipt, "-t", table, "-S").Output()
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "-N" && strings.HasPrefix(f[1], "KUBE-") {
			chains = append(chains, f[1])
		}
	}
	return chains
}

// KubeChains lists the KUBE- chains left in the host's iptables, for a
// check that teardown removed them.
func KubeChains() []string {
	var all []string
	for _, ipt := range iptablesCommands {
		for _, table := range tablesOf(ipt) {
			for _, c := range kubeChains(ipt, table) {
				all = append(all, ipt+" "+table+" "+c)
			}
		}
	}
	return all
}

// jumpRules are the rules, as -A arguments without the -A, that jump to a
// KUBE- chain from a chain that is not one.
func jumpRules(ipt, table string) [][]string {
	out, _ := exec.Command(ipt, "-t", table, "-S").Output()
	var rules [][]string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" || strings.HasPrefix(f[1], "KUBE-") || !strings.Contains(line, "-j KUBE-") {
			continue
		}
		// -S quotes comments; strip the quotes to pass them back as args.
		rules = append(rules, splitQuoted(strings.TrimPrefix(line, "-A ")))
	}
	return rules
}

// splitQuoted splits s on spaces, keeping "double quoted" words whole.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// killCgroup kills the processes in a cgroup tree: containers whose shim
// was killed, when the pods could not be drained.
func killCgroup(root string) {
	for attempt := 0; attempt < 20; attempt++ {
		var pids []int
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == "cgroup.procs" {
				data, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(data)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
			}
			return nil
		})
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroup removes a cgroup directory tree, leaves first; cgroupfs
// directories are removed with rmdir, not unlink.
func removeCgroup(root string) error {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !os.IsNotExist(err) {
			last = fmt.Errorf("rmdir %s: %w", dirs[i], err)
		}
	}
	return last
}

// Leftovers reports what a cluster in dir would have left on the host: for
// the check after teardown.
func Leftovers(dir string) []string {
	var left []string
	for _, pid := range processesNaming(dir) {
		left = append(left, fmt.Sprintf("process %d", pid))
	}
	if f, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(f), dir+"/") {
		left = append(left, "mounts under "+dir)
	}
	for _, c := range KubeChains() {
		left = append(left, "iptables chain "+c)
	}
	if _, err := os.Stat("/sys/class/net/" + Bridge); err == nil {
		left = append(left, "network interface "+Bridge)
	}
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "directory "+dir)
	}
	return left
}
