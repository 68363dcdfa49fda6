package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/client-go/tools/clientcmd"
)

// parse runs Execute with a RunFunc that only captures the options.
func parse(t *testing.T, args ...string) (*Options, error, string) {
	t.Helper()
	var got *Options
	var out bytes.Buffer
	err := Execute(context.Background(), args, Streams{Out: &out, Err: &out}, func(_ context.Context, o *Options, _ Streams) error {
		got = o
		return nil
	})
	return got, err, out.String()
}

func TestFlags(t *testing.T) {
	defaults := func(mutate func(o *Options)) *Options {
		o := NewOptions()
		o.Command = []string{"cmd", "arg"}
		mutate(o)
		return o
	}
	for _, tc := range []struct {
		name string
		args []string
		want *Options
	}{
		{name: "defaults", args: []string{"--", "cmd", "arg"}, want: defaults(func(*Options) {})},
		{name: "the command may follow the flags without --", args: []string{"-l", "x", "cmd", "arg"}, want: defaults(func(o *Options) { o.Lease = "x" })},
		{
			name: "flags after the command belong to the command",
			args: []string{"-l", "x", "--", "cmd", "-l", "y", "--", "z"},
			want: defaults(func(o *Options) { o.Lease = "x"; o.Command = []string{"cmd", "-l", "y", "--", "z"} }),
		},
		{
			name: "short forms",
			args: []string{"-l", "x", "-n", "ns", "-i", "me", "-w", "5", "-E", "3", "-u", "-s", "INT", "-k", "2s", "--", "cmd", "arg"},
			want: defaults(func(o *Options) {
				o.Lease, o.Namespace, o.Identity, o.Wait, o.ConflictExitCode = "x", "ns", "me", 5*time.Second, 3
				o.Cleanup, o.Signal, o.KillAfter = true, syscall.SIGINT, 2*time.Second
			}),
		},
		{
			name: "long forms and aliases",
			args: []string{"--lease=x", "--timeout", "1m", "--unlock", "--verbose", "--generate-identity", "--signal", "9",
				"--labels", "a=1,b=2", "--labels", "c=", "--lease-duration", "30s", "--renew-deadline", "20", "--retry-period", "1.5", "--kubeconfig", "/k", "--", "cmd", "arg"},
			want: defaults(func(o *Options) {
				o.Lease, o.Wait, o.Cleanup, o.Debug, o.GenerateIdentity, o.Signal = "x", time.Minute, true, true, true, syscall.SIGKILL
				o.Labels = map[string]string{"a": "1", "b": "2", "c": ""}
				o.LeaseDuration, o.RenewDeadline, o.RetryPeriod, o.Kubeconfig = 30*time.Second, 20*time.Second, 1500*time.Millisecond, "/k"
			}),
		},
		{name: "--nonblock", args: []string{"--nonblock", "--", "cmd", "arg"}, want: defaults(func(o *Options) { o.NonBlock = true })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err, _ := parse(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("options (-want,+got):\n%s", diff)
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"-l", "x"}, want: "no command given"},
		{args: []string{"-i", "a", "-g", "--", "x"}, want: "contradict"},
		{args: []string{"--nonblock", "-w", "1s", "--", "x"}, want: "contradict"},
		{args: []string{"-w", "-1s", "--", "x"}, want: "not a duration"},
		{args: []string{"-w", "-3", "--", "x"}, want: "out of range"},
		{args: []string{"-k", "NaN", "--", "x"}, want: "out of range"},
		{args: []string{"-w", "Inf", "--", "x"}, want: "out of range"},
		{args: []string{"-s", "0", "--", "x"}, want: "out of range"},
		{args: []string{"-s", "SIGFOO", "--", "x"}, want: `unknown signal "SIGFOO": give a number or one of`},
		{args: []string{"--labels", "=v", "--", "x"}, want: "not key=value"},
		{args: []string{"-E", "-1", "--", "x"}, want: "conflict-exit-code"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err, _ := parse(t, tc.args...)
			var exit *ExitError
			if !errors.As(err, &exit) || exit.Code != ExitFailure || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want exit %d mentioning %q", err, ExitFailure, tc.want)
			}
			var stderr bytes.Buffer
			if code := Exit(err, &stderr); code != ExitFailure || strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("Exit printed %q and returned %d", stderr.String(), code)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	_, err, out := parse(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"klock [flags] -- command [args...]", "coordination.k8s.io", "124", "--conflict-exit-code", "KLOCK_FENCING_TOKEN"} {
		if !strings.Contains(out, want) {
			t.Errorf("help does not mention %q", want)
		}
	}
	if _, err, out := parse(t, "-V"); err != nil || !strings.HasPrefix(out, "klock ") {
		t.Errorf("-V printed %q, %v", out, err)
	}
}

func TestLockConfigResolvesNamespaceAndIdentity(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: from-context}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	saFile := filepath.Join(dir, "namespace")
	for _, tc := range []struct {
		name          string
		flags         []string
		env           map[string]string
		pod           string // the service account's namespace file, if any
		wantNamespace string
		wantIdentity  string // "" means generated
	}{
		{name: "flag", flags: []string{"-n", "flag", "-i", "id"}, env: map[string]string{EnvNamespace: "env", EnvIdentity: "env-id"}, pod: "pod", wantNamespace: "flag", wantIdentity: "id"},
		{name: "environment", env: map[string]string{EnvNamespace: "env", EnvIdentity: "env-id"}, pod: "pod", wantNamespace: "env", wantIdentity: "env-id"},
		{name: "pod", pod: "pod\n", wantNamespace: "pod"},
		{name: "kubeconfig context", wantNamespace: "from-context"},
		{name: "-g over the environment", flags: []string{"-g"}, env: map[string]string{EnvIdentity: "env-id"}, wantNamespace: "from-context"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_ = os.Remove(saFile)
			if tc.pod != "" {
				if err := os.WriteFile(saFile, []byte(tc.pod), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			defer func(old string) { serviceAccountNamespaceFile = old }(serviceAccountNamespaceFile)
			serviceAccountNamespaceFile = saFile

			o, err, _ := parse(t, append(append([]string{"--kubeconfig", kubeconfig}, tc.flags...), "--", "x")...)
			if err != nil {
				t.Fatal(err)
			}
			cfg := o.lockConfig(func(k string) string { return tc.env[k] }, o.kubeconfig())
			if cfg.Namespace != tc.wantNamespace {
				t.Errorf("namespace %q, want %q", cfg.Namespace, tc.wantNamespace)
			}
			if tc.wantIdentity != "" && cfg.Identity != tc.wantIdentity {
				t.Errorf("identity %q, want %q", cfg.Identity, tc.wantIdentity)
			}
			if tc.wantIdentity == "" && (cfg.Identity == "" || cfg.Identity == "env-id") {
				t.Errorf("identity %q, want a generated one", cfg.Identity)
			}
		})
	}
}

func TestNoClusterIsOneClearLine(t *testing.T) {
	empty := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: ""}, &clientcmd.ConfigOverrides{})
	_, err := restConfig(empty)
	if err == nil || !strings.Contains(err.Error(), "pass --kubeconfig") {
		t.Errorf("error %v, want advice to pass --kubeconfig", err)
	}
}

func TestInstall(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "klock")
	if _, err, _ := parse(t, "install", dest); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(self)
	got, err := os.ReadFile(dest)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the installed copy differs from the running binary (err %v)", err)
	}
	if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o555 {
		t.Errorf("mode %v, want r-xr-xr-x", fi.Mode().Perm())
	}
	// Installing again replaces the file, even though it is read-only.
	if _, err, _ := parse(t, "install", dest); err != nil {
		t.Fatalf("second install: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Errorf("left %d files behind, want only the binary", len(entries))
	}

	for _, args := range [][]string{{"install"}, {"install", "a", "b"}, {"install", filepath.Join(t.TempDir(), "missing", "klock")}} {
		_, err, _ := parse(t, args...)
		var exit *ExitError
		if !errors.As(err, &exit) || exit.Code != ExitFailure {
			t.Errorf("%v: error %v, want exit %d", args, err, ExitFailure)
		}
	}

	// Only the first argument is the subcommand.
	o, err, _ := parse(t, "-l", "x", "--", "install", "a")
	if err != nil || !slices.Equal(o.Command, []string{"install", "a"}) {
		t.Errorf("klock -l x -- install a: command %v, err %v", o.Command, err)
	}
}

func TestLeaseTimingsGivenAloneAreCompleted(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for accepted
	}{
		{name: "a short lease alone", args: []string{"--lease-duration=3s"}},
		{name: "a long renew deadline alone", args: []string{"--renew-deadline=30s"}},
		{name: "a retry period alone", args: []string{"--retry-period=5s"}},
		{name: "all three, consistent", args: []string{"--lease-duration=2s", "--renew-deadline=1500ms", "--retry-period=300ms"}},
		{name: "a renew deadline over the lease duration, both given", args: []string{"--lease-duration=3s", "--renew-deadline=5s"}, want: "invalid renew deadline 5s: must be above 0 and below the lease duration 3s"},
		{name: "a retry period over the derived renew deadline", args: []string{"--lease-duration=3s", "--retry-period=2s"}, want: "invalid retry period 2s: must be above 0 and below the renew deadline 2s"},
		{name: "a kill-after within the time others wait", args: []string{"--kill-after=5s"}},
		{name: "a kill-after past the time others wait", args: []string{"--kill-after=6s"}, want: "--kill-after 6s is longer than others wait once the lock is lost (lease duration 15s − renew deadline 10s = 5s)"},
		{name: "a kill-after a longer lease allows", args: []string{"--kill-after=6s", "--lease-duration=30s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckArgs(tc.args)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// With --api-server, klock talks to that server only, trusting only the CA
// in $KLOCK_API_CA: nothing else in the pod's environment is read.
func TestPinnedAPIServer(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))

	rc, err := pinnedConfig("https://10.96.0.1:443", ca)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://10.96.0.1:443" || string(rc.CAData) != ca || rc.CAFile != "" || rc.BearerTokenFile != serviceAccountTokenFile || rc.BearerToken != "" || rc.Insecure {
		t.Errorf("config %+v", rc)
	}
	for _, tc := range []struct{ server, ca, want string }{
		{"http://10.96.0.1", ca, `--api-server "http://10.96.0.1" is not an https URL`},
		{"10.96.0.1:443", ca, "is not an https URL"},
		{"https://10.96.0.1:443", "", "needs the API server's CA, PEM-encoded, in $KLOCK_API_CA"},
		{"https://10.96.0.1:443", "not a certificate", "in $KLOCK_API_CA, which holds none"},
	} {
		if _, err := pinnedConfig(tc.server, tc.ca); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pinnedConfig(%q, %q): %v, want %q", tc.server, tc.ca, err, tc.want)
		}
	}
}
