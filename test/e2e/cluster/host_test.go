package cluster

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplitQuoted(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"plain words", "INPUT -j KUBE-FIREWALL", []string{"INPUT", "-j", "KUBE-FIREWALL"}},
		{"a quoted comment stays one argument, unquoted",
			`INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`,
			[]string{"INPUT", "-m", "comment", "--comment", "kubernetes health check service ports", "-j", "KUBE-NODEPORTS"}},
		{"repeated spaces", "OUTPUT  -j   KUBE-SERVICES ", []string{"OUTPUT", "-j", "KUBE-SERVICES"}},
		{"an empty quoted argument", `X --comment "" -j Y`, []string{"X", "--comment", "", "-j", "Y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, splitQuoted(tc.in)); diff != "" {
				t.Errorf("splitQuoted(%q) (-want,+got):\n%s", tc.in, diff)
			}
		})
	}
}

// Every component keeps its files under the cluster's directory, which
// teardown removes.
func TestConfigsNameTheDirectory(t *testing.T) {
	const dir = "/tmp/klock-e2e-test"
	for name, cfg := range map[string]string{
		"containerd": containerdConfig(dir),
		"cni bridge": bridgeConflist(dir),
		"kubelet":    kubeletConfig(dir, "ca", "cert", "key", 1),
	} {
		if !strings.Contains(cfg, dir+"/") {
			t.Errorf("the %s configuration keeps no file under %s:\n%s", name, dir, cfg)
		}
	}
}
