package server

import (
	"context"
	"maps"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/klock-io/klock/webhook/images"
	"github.com/klock-io/klock/webhook/wrap"
)

func TestOptions(t *testing.T) {
	parse := func(args ...string) (*Options, error) {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		return o, o.Validate()
	}
	o, err := parse("--klock-image", "ghcr.io/klock-io/klock:v1", "--webhook-port", "10250", "--webhook-cert-path", "/certs", "--default-platform", "linux/arm64/v8")
	if err != nil {
		t.Fatal(err)
	}
	if o.Port != 10250 || o.CertDir != "/certs" || o.KlockImage != "ghcr.io/klock-io/klock:v1" || o.EnableHTTP2 || o.DefaultPlatform != "linux/arm64/v8" {
		t.Errorf("options: %+v", o)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: nil, want: "--klock-image is required"},
		{args: []string{"--klock-image", "x", "--klock-image-pull-policy", "Sometimes"}, want: `--klock-image-pull-policy "Sometimes": give Always, IfNotPresent or Never`},
		{args: []string{"--klock-image", "x", "--webhook-port", "0"}, want: "--webhook-port 0: give a port from 1 to 65535"},
		{args: []string{"--klock-image", "x", "--image-cache-size", "0"}, want: "--image-cache-size 0: give at least 1"},
		{args: []string{"--klock-image", "x", "--image-timeout", "0s"}, want: "--image-timeout 0s: give a positive duration"},
		{args: []string{"--klock-image", "x", "--lease-access", "some"}, want: `--lease-access "some": give off, policy or all`},
		{args: []string{"--klock-image", "x", "--lease-access", "all", "--policies=false"}, want: "--lease-access all needs --policies"},
		{args: []string{"--klock-image", "x", "--webhook-configuration", ""}, want: "--webhook-configuration is required with --policies"},
		{args: []string{"--klock-image", "x", "--gating", "always"}, want: `--gating "always": give off, opt-in or default`},
		{args: []string{"--klock-image", "x", "--gating", ""}, want: `--gating "": give off, opt-in or default`},
		{args: []string{"--klock-image", "x", "--gating-namespaces", "team-a,Team-B"}, want: `--gating-namespaces: "Team-B" is not a namespace name: give namespace names (DNS-1123 labels`},
		{args: []string{"--klock-image", "x", "--gating-namespaces", "team-a,,team-b"}, want: `--gating-namespaces: "" is not a namespace name`},
		{args: []string{"--klock-image", "x", "--gating-namespaces", "team.a"}, want: `--gating-namespaces: "team.a" is not a namespace name`},
		{args: []string{"--klock-image", "x", "--gating-namespaces", strings.Repeat("a", 64)}, want: "is not a namespace name: give namespace names (DNS-1123 labels: lowercase letters, digits and '-', at most 63 characters), comma-separated, such as team-a,team-b"},
	} {
		if _, err := parse(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

// --gating reaches the pod mutation; opt-in unless given.
func TestGatingOption(t *testing.T) {
	for args, want := range map[string]wrap.Gating{"": wrap.GatingOptIn, "--gating=off": wrap.GatingOff, "--gating=opt-in": wrap.GatingOptIn, "--gating=default": wrap.GatingDefault} {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		argv := []string{"--klock-image", "x"}
		if args != "" {
			argv = append(argv, args)
		}
		if err := fs.Parse(argv); err != nil {
			t.Fatal(err)
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("%s: %v", args, err)
		}
		if o.Gating != want || o.wrapOptions().Gating != want {
			t.Errorf("%q: gating %q, wrap options %q; want %q", args, o.Gating, o.wrapOptions().Gating, want)
		}
	}
}

// --gating-namespaces reaches the pod mutation, and narrows the gate
// controller's pod cache to those namespaces, keeping its label selector,
// so that it lists and watches pods there only; without it, every
// namespace.
func TestGatingNamespacesOption(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string // nil: every namespace
	}{
		{args: nil},
		{args: []string{"--gating-namespaces=team-a,team-b"}, want: []string{"team-a", "team-b"}},
		{args: []string{"--gating-namespaces", "team-a", "--gating-namespaces", "team-b"}, want: []string{"team-a", "team-b"}},
		{args: []string{"--gating=default", "--gating-namespaces=apps"}, want: []string{"apps"}},
	} {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(append([]string{"--klock-image", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if !slices.Equal(o.GatingNamespaces, tc.want) || !slices.Equal(o.wrapOptions().GatingNamespaces, tc.want) {
			t.Errorf("%q: gating namespaces %q, wrap options %q; want %q", tc.args, o.GatingNamespaces, o.wrapOptions().GatingNamespaces, tc.want)
		}
		var pods *cache.ByObject
		for obj, by := range managerOptions(o, nil).Cache.ByObject {
			if _, ok := obj.(*corev1.Pod); ok {
				if pods != nil {
					t.Fatalf("%q: two cache entries for pods", tc.args)
				}
				pods = &by
			}
		}
		if pods == nil {
			t.Fatalf("%q: no cache entry for pods", tc.args)
		}
		if got := pods.Label.String(); got != wrap.LabelGated+"=true" {
			t.Errorf("%q: pods cached by label %q, want the gated ones", tc.args, got)
		}
		if tc.want == nil {
			if pods.Namespaces != nil {
				t.Errorf("%q: pods cached in %v, want every namespace", tc.args, pods.Namespaces)
			}
			continue
		}
		if got := slices.Sorted(maps.Keys(pods.Namespaces)); !slices.Equal(got, tc.want) {
			t.Errorf("%q: pods cached in %q, want %q", tc.args, got, tc.want)
		}
	}
}

// With --read-pull-secrets=false the image resolver still reads an
// image's command, anonymously, and asks the API server for no Secret and
// no ServiceAccount: the chart then grants the webhook neither.
func TestReadPullSecrets(t *testing.T) {
	reg := httptest.NewServer(ggcrregistry.New())
	t.Cleanup(reg.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/app:1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Config(empty.Image, v1.Config{Entrypoint: []string{"/app"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "runner", ImagePullSecrets: []corev1.LocalObjectReference{{Name: "pull"}},
			Containers: []corev1.Container{{Name: "app", Image: ref.String()}},
		},
	}
	for _, read := range []bool{true, false} {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse([]string{"--read-pull-secrets=" + strconv.FormatBool(read)}); err != nil {
			t.Fatal(err)
		}
		clientset := fake.NewClientset(
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "runner", Namespace: "ns"}, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "sa-pull"}}},
		)
		resolver := images.NewResolver(pullSecretsClient(clientset, o.ReadPullSecrets), v1.Platform{OS: "linux", Architecture: "amd64"}, 8, images.WithInsecureRegistries([]string{"127.0.0.1"}))
		cmd, err := resolver.Resolve(context.Background(), pod, &pod.Spec.Containers[0])
		if err != nil {
			t.Fatalf("read %v: %v", read, err)
		}
		if !slices.Equal(cmd.Entrypoint, []string{"/app"}) {
			t.Errorf("read %v: entrypoint %q", read, cmd.Entrypoint)
		}
		var reads []string
		for _, a := range clientset.Actions() {
			if r := a.GetResource().Resource; r == "secrets" || r == "serviceaccounts" {
				reads = append(reads, a.GetVerb()+" "+r)
			}
		}
		if want := []string{"get secrets", "get serviceaccounts", "get secrets"}; read && !slices.Equal(reads, want) {
			t.Errorf("--read-pull-secrets: the webhook asked %q, want %q", reads, want)
		}
		if !read && len(reads) > 0 {
			t.Errorf("--read-pull-secrets=false: the webhook asked %q, want nothing", reads)
		}
	}
}

func TestRegistryOptions(t *testing.T) {
	parse := func(args ...string) (*Options, error) {
		o := NewOptions()
		fs := pflag.NewFlagSet("klock-webhook", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(append([]string{"--klock-image", "x"}, args...)); err != nil {
			return nil, err
		}
		return o, o.Validate()
	}
	o, err := parse("--insecure-registry", "10.244.0.1,registry.local:5000", "--insecure-registry", "[fd00::1]:5000", "--registry-auth-host", "gitlab.com")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.InsecureRegistries, " "); got != "10.244.0.1 registry.local:5000 [fd00::1]:5000" {
		t.Errorf("--insecure-registry: %q", got)
	}
	if got := strings.Join(o.RegistryAuthHosts, " "); got != "gitlab.com" {
		t.Errorf("--registry-auth-host: %q", got)
	}
	if o, _ := parse(); len(o.InsecureRegistries) != 0 || len(o.RegistryAuthHosts) != 0 {
		t.Errorf("defaults: %v, %v; want none", o.InsecureRegistries, o.RegistryAuthHosts)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"--insecure-registry", "http://10.0.0.5:5000"}, want: `--insecure-registry: "http://10.0.0.5:5000" is not a host or host:port: give host or host:port`},
		{args: []string{"--insecure-registry", "10.0.0.5:5000/v2"}, want: `--insecure-registry: "10.0.0.5:5000/v2" is not a host or host:port`},
		{args: []string{"--insecure-registry", "reg:99999"}, want: `--insecure-registry: "reg:99999": the port must be from 1 to 65535`},
		{args: []string{"--registry-auth-host", "user@gitlab.com"}, want: `--registry-auth-host: "user@gitlab.com" is not a host or host:port`},
	} {
		if _, err := parse(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
