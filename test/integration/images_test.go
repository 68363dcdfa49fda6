package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// startImageWebhook starts the webhook with the in-process registries on
// 127.0.0.1 listed in --insecure-registry: without it the webhook reaches
// no loopback registry, nor any over plain HTTP.
func startImageWebhook(t *testing.T, hosts ...string) {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	startWebhookUntil(t, func(o *server.Options) { o.InsecureRegistries = hosts })
}

// A real OCI registry in process, one public and one that wants a password.
func startRegistries(t *testing.T, requests *atomic.Int64) (public, private string) {
	t.Helper()
	pub := httptest.NewServer(counting(requests, registry.New()))
	priv := httptest.NewServer(basicAuth("puller", "s3cret", registry.New()))
	t.Cleanup(pub.Close)
	t.Cleanup(priv.Close)
	return strings.TrimPrefix(pub.URL, "http://"), strings.TrimPrefix(priv.URL, "http://")
}

// counting counts the requests for manifests and blobs, not the /v2/ ping
// with which a client learns how to authenticate.
func counting(n *atomic.Int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			n.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

func basicAuth(user, pass string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you?"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// pushImage pushes an image whose config says entrypoint and cmd.
func pushImage(t *testing.T, ref string, auth authn.Authenticator, platform v1.Platform, entrypoint, cmd []string) v1.Image {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS: platform.OS, Architecture: platform.Architecture,
		Config: v1.Config{Entrypoint: entrypoint, Cmd: cmd},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ref != "" {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithAuth(auth)); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func TestWebhookReadsImageEntrypoints(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	var requests atomic.Int64
	pub, priv := startRegistries(t, &requests)
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 := v1.Platform{OS: "linux", Architecture: "arm64"}
	creds := &authn.Basic{Username: "puller", Password: "s3cret"}

	echo := pushImage(t, pub+"/tools/echo:v1", authn.Anonymous, amd64, []string{"/bin/echo"}, []string{"hello", "$(HOME)"})
	echoDigest, err := echo.Digest()
	if err != nil {
		t.Fatal(err)
	}
	pushImage(t, priv+"/team/app:v1", creds, amd64, []string{"/app"}, []string{"--serve"})
	index := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: pushImage(t, "", nil, amd64, []string{"/on-amd64"}, nil), Descriptor: v1.Descriptor{Platform: &amd64}},
		mutate.IndexAddendum{Add: pushImage(t, "", nil, arm64, []string{"/on-arm64"}, nil), Descriptor: v1.Descriptor{Platform: &arm64}},
	)
	multi, err := name.ParseReference(pub + "/multi/arch:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(multi, index); err != nil {
		t.Fatal(err)
	}

	// A pull secret, as kubectl create secret docker-registry makes it.
	dockercfg, _ := json.Marshal(map[string]any{"auths": map[string]any{priv: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("puller:s3cret")),
	}}})
	if _, err := cp.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "pull"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: dockercfg},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: "puller"}, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "pull"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	startImageWebhook(t)

	lease := map[string]string{wrap.AnnotationLease: "images"}
	klock := []string{"/klock-bin/klock", "--lease=images", "--"}
	for _, tc := range []struct {
		name   string
		pod    func(p *corev1.Pod)
		want   []string // the wrapped command; nil: denied
		denied string
	}{
		{name: "ENTRYPOINT and CMD of a public image, $ escaped",
			pod:  func(p *corev1.Pod) { p.Spec.Containers[0].Image = pub + "/tools/echo:v1" },
			want: append(klock, "/bin/echo", "hello", "$$(HOME)")},
		{name: "args replace CMD",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers[0].Image = pub + "/tools/echo:v1"
				p.Spec.Containers[0].Args = []string{"bye"}
			},
			want: append(klock, "/bin/echo", "bye")},
		{name: "a private image with the pod's pull secret",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers[0].Image = priv + "/team/app:v1"
				p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "pull"}}
			},
			want: append(klock, "/app", "--serve")},
		{name: "a private image with the service account's pull secret",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers[0].Image = priv + "/team/app:v1"
				p.Spec.ServiceAccountName = "puller"
			},
			want: append(klock, "/app", "--serve")},
		{name: "a private image without credentials is denied",
			pod:    func(p *corev1.Pod) { p.Spec.Containers[0].Image = priv + "/team/app:v1" },
			denied: "the pod's imagePullSecrets and its service account's hold no credentials this registry accepts"},
		{name: "a multi-platform image, by default linux/amd64",
			pod:  func(p *corev1.Pod) { p.Spec.Containers[0].Image = pub + "/multi/arch:v1" },
			want: append(klock, "/on-amd64")},
		{name: "a multi-platform image, on the architecture the nodeSelector asks for",
			pod: func(p *corev1.Pod) {
				p.Spec.Containers[0].Image = pub + "/multi/arch:v1"
				p.Spec.NodeSelector = map[string]string{"kubernetes.io/arch": "arm64"}
			},
			want: append(klock, "/on-arm64")},
		{name: "an image that does not exist is denied with the fix",
			pod:    func(p *corev1.Pod) { p.Spec.Containers[0].Image = pub + "/no/such:v1" },
			denied: "set command (and args) in the pod spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("", lease, corev1.Container{Name: "app"})
			p.GenerateName = "img-"
			tc.pod(p)
			got, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if tc.denied != "" {
				if err == nil || !strings.Contains(err.Error(), tc.denied) {
					t.Fatalf("error %v, want a denial containing %q", err, tc.denied)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got.Spec.Containers[0].Command); diff != "" {
				t.Errorf("command (-want,+got):\n%s", diff)
			}
		})
	}

	t.Run("configs are cached by digest: a tag costs one HEAD of its manifest", func(t *testing.T) {
		p := pod("", lease, corev1.Container{Name: "app", Image: pub + "/tools/echo:v1"})
		p.GenerateName = "cached-"
		requests.Store(0)
		if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := requests.Load(); got != 1 {
			t.Errorf("%d registry requests for an image read before, want 1", got)
		}
	})

	t.Run("an image named by digest, read before by its tag, costs no request", func(t *testing.T) {
		byDigest := pub + "/tools/echo@" + echoDigest.String()
		for i, want := range []int64{0, 0} {
			p := pod("", lease, corev1.Container{Name: "app", Image: byDigest})
			p.GenerateName = "digest-"
			requests.Store(0)
			got, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if n := requests.Load(); n != want {
				t.Errorf("pod %d: %d registry requests, want %d", i, n, want)
			}
			if diff := cmp.Diff(append(klock, "/bin/echo", "hello", "$$(HOME)"), got.Spec.Containers[0].Command); diff != "" {
				t.Errorf("command (-want,+got):\n%s", diff)
			}
		}
	})
}

// spaces is a body of n spaces, made as it is read: a huge body costs the
// test no memory.
type spaces struct{ n int64 }

func (s *spaces) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.n {
		p = p[:s.n]
	}
	for i := range p {
		p[i] = ' '
	}
	s.n -= int64(len(p))
	return len(p), nil
}

// A registry the pod author chose may answer anything, or nothing: the pod
// is denied with the image, the reason and the fix, in the webhook's own
// words, and within the webhook's timeout.
func TestImageRegistryFaults(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	const marker = "MARKER-from-the-registry-body"
	var cut atomic.Bool // the webhook hung up on a body it would not read whole
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(r.URL.Path, "/v2/structured/"):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"`+marker+`","detail":"`+marker+`"}]}`)
		case strings.HasPrefix(r.URL.Path, "/v2/huge/"):
			w.WriteHeader(http.StatusInternalServerError)
			if _, err := io.Copy(w, io.MultiReader(strings.NewReader(marker), &spaces{n: 256 << 20})); err != nil {
				cut.Store(true)
			}
		case strings.HasPrefix(r.URL.Path, "/v2/hanging/"):
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	startImageWebhook(t)

	const fix = "set command (and args) in the pod spec"
	// By digest: a tag costs a HEAD first, whose answer has no body.
	const digest = "@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name, image, reason string
	}{
		{name: "a registry error whose body says anything",
			image: host + "/structured/image" + digest, reason: "the registry answered HTTP 404 Not Found (MANIFEST_UNKNOWN)"},
		{name: "an error body of 256 MiB",
			image: host + "/huge/image" + digest, reason: "the registry's error body (HTTP 500) is over the 4 KiB limit"},
		{name: "a registry that never answers",
			image: host + "/hanging/image:v1", reason: "the registry did not answer within 3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("", map[string]string{wrap.AnnotationLease: "images"}, corev1.Container{Name: "app", Image: tc.image})
			p.GenerateName = "faulty-"
			_, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err == nil {
				t.Fatal("admitted, want a denial")
			}
			msg := err.Error()
			for _, want := range []string{fmt.Sprintf("image %q", tc.image), tc.reason, fix} {
				if !strings.Contains(msg, want) {
					t.Errorf("denial %q, want it to contain %q", msg, want)
				}
			}
			if strings.Contains(msg, marker) {
				t.Errorf("denial %q holds what the registry sent", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("denial %q is more than one line", msg)
			}
		})
	}
	reg.Close() // waits for the handlers
	if !cut.Load() {
		t.Error("the webhook read the 256 MiB error body whole: the registry's writes never failed")
	}
}

// A registry may not send the webhook elsewhere: not to another host for
// a token, not to cloud metadata, not to the API server, not over plain
// HTTP unless listed. Each pod is denied in the webhook's words naming
// the registry and the fix, and the host it was sent to is never reached.
func TestImageRegistryRefusals(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	var hits atomic.Int64
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, `{"token":"secret"}`)
	}))
	t.Cleanup(forbidden.Close)
	_, forbiddenPort, _ := net.SplitHostPort(strings.TrimPrefix(forbidden.URL, "http://"))
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v2/metadata/"):
			http.Redirect(w, r, "https://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/v2/sideways/"):
			http.Redirect(w, r, "http://127.0.0.1:"+forbiddenPort+"/v2/", http.StatusFound)
		}
	}))
	t.Cleanup(hostile.Close)
	host := strings.TrimPrefix(hostile.URL, "http://")
	realm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://localhost:`+forbiddenPort+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(realm.Close)
	realmHost := strings.TrimPrefix(realm.URL, "http://")
	public, _ := startRegistries(t, new(atomic.Int64))
	api, err := url.Parse(cp.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	apiServer := api.Host
	// Listed: the hostile registry's own port, and the API server's,
	// which is refused all the same.
	startImageWebhook(t, host, realmHost, apiServer)

	const digest = "@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name, image, reason string
	}{
		{name: "a token realm on another host",
			image:  realmHost + "/realm/image" + digest,
			reason: "registry " + realmHost + " sends klock for a token to another host; klock takes tokens only from the registry's own host, auth.docker.io for Docker Hub, and the hosts listed in --registry-auth-host: ask the cluster admin to list the token host"},
		{name: "a redirect to cloud metadata",
			image:  host + "/metadata/image" + digest,
			reason: "registry " + host + " redirected klock to a link-local or cloud metadata address, which klock never contacts"},
		{name: "a redirect to another port over plain HTTP",
			image:  host + "/sideways/image" + digest,
			reason: "registry " + host + " would be read over plain HTTP, which klock does only for the registries listed in --insecure-registry: ask the cluster admin to list it"},
		{name: "a loopback registry not listed",
			image:  public + "/tools/echo" + digest,
			reason: "registry " + public + " is at a loopback address, which klock contacts only for the registries listed in --insecure-registry: ask the cluster admin to list it"},
		{name: "the API server as a registry, even when listed",
			image:  apiServer + "/api/v1" + digest,
			reason: "registry " + apiServer + " is at the Kubernetes API server, which klock never contacts"},
		{name: "cloud metadata as a registry",
			image:  "169.254.169.254/latest/meta-data" + digest,
			reason: "registry 169.254.169.254 is at a link-local or cloud metadata address, which klock never contacts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod("", map[string]string{wrap.AnnotationLease: "images"}, corev1.Container{Name: "app", Image: tc.image})
			p.GenerateName = "refused-"
			_, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err == nil {
				t.Fatal("admitted, want a denial")
			}
			for _, want := range []string{fmt.Sprintf("image %q", tc.image), tc.reason, "set command (and args) in the pod spec"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("denial %q, want it to contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), forbiddenPort) {
				t.Errorf("denial %q holds what a host sent, or the host the registry named", err)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the forbidden server got %d requests", n)
	}
}
