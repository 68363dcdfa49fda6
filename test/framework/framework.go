// Package framework starts a real kube-apiserver and etcd (built from their
// Go modules into bin/ by `make control-plane`) for klock's integration
// tests, benchmarks and demo, and builds the binaries they run.
package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// ControlPlane is a running kube-apiserver with its etcd.
type ControlPlane struct {
	env *envtest.Environment
	// Config authenticates as a cluster administrator.
	Config *rest.Config
	// Kubeconfig is a file holding Config, for the klock binary.
	Kubeconfig string
	Client     kubernetes.Interface
	dir        string
	// restartable: see Options.Restartable.
	restartable bool
}

// RepoRoot is the root of the klock repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Start starts etcd and kube-apiserver from $KUBEBUILDER_ASSETS, which the
// Makefile points at bin/k8s/<version>.
// It installs the webhook configuration and the CRDs from deploy/.
func Start() (*ControlPlane, error) {
	return StartWith(Options{Webhook: true, CRDs: []string{filepath.Join(RepoRoot(), "deploy", "base", "crd")}})
}

// Options say what to install into a new control plane.
type Options struct {
	// Webhook installs deploy/'s MutatingWebhookConfiguration, pointed at
	// WebhookServing.
	Webhook bool
	// CRDs are files or directories of CustomResourceDefinitions.
	CRDs []string
	// Restartable keeps etcd's data and kube-apiserver's certificates in
	// directories of the control plane's own, so that StopComponent,
	// KillComponent and StartComponent can restart either process with
	// the same data, ports and credentials (see restart.go).
	Restartable bool
}

// StartWith is Start with what o says installed.
func StartWith(o Options) (*ControlPlane, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests through make (make integration), which builds kube-apiserver and etcd into bin/")
	}
	dir, err := os.MkdirTemp("", "klock-cp-")
	if err != nil {
		return nil, err
	}
	// The webhook configuration users install, pointed by envtest at a
	// local port with a certificate of its own; the tests that need the
	// webhook serve it there (WebhookServing).
	env := &envtest.Environment{CRDInstallOptions: envtest.CRDInstallOptions{Paths: o.CRDs, ErrorIfPathMissing: true}}
	if o.Webhook {
		env.WebhookInstallOptions.Paths = []string{filepath.Join(RepoRoot(), "deploy", "base", "mutatingwebhookconfiguration.yaml")}
	}
	if o.Restartable {
		if err := restartable(env, dir); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	cfg, err := env.Start()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	cp := &ControlPlane{env: env, dir: dir, restartable: o.Restartable}
	user, err := env.AddUser(envtest.User{Name: "klock-admin", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		_ = cp.Stop()
		return nil, err
	}
	cp.Config = user.Config()
	kc, err := user.KubeConfig()
	if err != nil {
		_ = cp.Stop()
		return nil, err
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, kc, 0o600); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	if cp.Client, err = kubernetes.NewForConfig(cp.Config); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return cp, nil
}

// WebhookServing is where the installed webhook configuration sends
// admission requests, and the directory with the certificate to serve.
func (cp *ControlPlane) WebhookServing() (host string, port int, certDir string) {
	o := cp.env.WebhookInstallOptions
	return o.LocalServingHost, o.LocalServingPort, o.LocalServingCertDir
}

// Stop stops the control plane and removes its files.
func (cp *ControlPlane) Stop() error {
	err := cp.env.Stop()
	_ = os.RemoveAll(cp.dir)
	return err
}

// AddUser returns a kubeconfig file and rest.Config for a user with no
// permissions beyond what RBAC grants the name and groups.
func (cp *ControlPlane) AddUser(name string, groups ...string) (string, *rest.Config, error) {
	user, err := cp.env.AddUser(envtest.User{Name: name, Groups: groups}, cp.Config)
	if err != nil {
		return "", nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(cp.dir, "kubeconfig-"+name)
	return path, user.Config(), os.WriteFile(path, kc, 0o600)
}

// CreateNamespace creates a namespace with a generated name.
func (cp *ControlPlane) CreateNamespace(ctx context.Context, prefix string) (string, error) {
	ns, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return ns.Name, nil
}

// Build compiles the main package pkg (an import path) into dir and returns
// the binary's path. The klock binary is built the way the Makefile builds
// it: static and stripped.
func Build(dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = RepoRoot() // the product's module, with its own go.mod
	if strings.HasPrefix(pkg, "github.com/klock-io/klock/test/") {
		cmd.Dir = filepath.Join(cmd.Dir, "test")
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}

// KubeconfigVia writes a copy of the kubeconfig at src whose clusters point
// at server (https://host:port) instead, and returns its path.
func KubeconfigVia(src, server string) (string, error) {
	cfg, err := clientcmd.LoadFromFile(src)
	if err != nil {
		return "", err
	}
	for _, c := range cfg.Clusters {
		c.Server = server
	}
	dst := src + "-via-" + strings.NewReplacer(":", "-", "/", "-").Replace(server)
	return dst, clientcmd.WriteToFile(*cfg, dst)
}

// Binaries are the programs the tests run.
type Binaries struct {
	// Klock is the klock CLI, built static and stripped as released.
	Klock string
	// Probe records when it runs; see test/internal/probe.
	Probe string
	// Webhook is klock-webhook.
	Webhook string
}

// BuildBinaries builds klock and the probe into dir.
func BuildBinaries(dir string) (Binaries, error) {
	var b Binaries
	var err error
	if b.Klock, err = Build(dir, "github.com/klock-io/klock/cmd/klock"); err != nil {
		return b, err
	}
	if b.Webhook, err = Build(dir, "github.com/klock-io/klock/cmd/klock-webhook"); err != nil {
		return b, err
	}
	b.Probe, err = Build(dir, "github.com/klock-io/klock/test/internal/probe")
	return b, err
}

// Env is a running control plane and the binaries to run against it.
type Env struct {
	*ControlPlane
	Binaries
	dir string
}

// Setup builds the binaries and starts the control plane, for a TestMain.
func Setup() (*Env, error) {
	dir, err := os.MkdirTemp("", "klock-bin-")
	if err != nil {
		return nil, err
	}
	e := &Env{dir: dir}
	if e.Binaries, err = BuildBinaries(dir); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if e.ControlPlane, err = Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return e, nil
}

// Teardown stops the control plane and removes the binaries.
func (e *Env) Teardown() {
	_ = e.Stop()
	_ = os.RemoveAll(e.dir)
}

// Main is a TestMain body: it sets up an Env, hands it to use, runs the
// tests and tears the Env down, and returns the exit code.
func Main(m interface{ Run() int }, use func(*Env)) int {
	env, err := Setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Teardown()
	use(env)
	return m.Run()
}

// GrantLeases lets service account sa use Leases in ns, with the Role and
// RoleBinding the README tells users to create.
func (cp *ControlPlane) GrantLeases(ctx context.Context, ns, sa string) error {
	rbac := cp.Client.RbacV1()
	name := "klock-lease-holder-" + sa
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update", "watch", "delete"}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}, metav1.CreateOptions{})
	return err
}
