package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// marker stands for whatever a registry, or a host behind it, puts into
// what it sends; it must never reach a pod's denial.
const marker = "MARKER-from-the-registry-body"

// endless is a body of n bytes (n < 0: never ending), made as it is read,
// so that a huge body costs the test no memory.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	if e.n == 0 {
		return 0, io.EOF
	}
	if e.n > 0 && int64(len(p)) > e.n {
		p = p[:e.n]
	}
	for i := range p {
		p[i] = ' ' // JSON whitespace: a reader that took it all would parse on
	}
	if e.n > 0 {
		e.n -= int64(len(p))
	}
	return len(p), nil
}

// registry is an httptest registry that answers the /v2/ ping itself (with
// challenge, a WWW-Authenticate whose %s is its host, if not empty) and
// everything else with answer. It counts the body bytes it wrote and
// whether a write failed, which is how it sees the client hang up.
type registry struct {
	*httptest.Server
	written atomic.Int64
	cut     atomic.Bool
}

func startRegistry(t *testing.T, challenge string, answer func(w http.ResponseWriter, r *http.Request, body func(io.Reader))) *registry {
	t.Helper()
	reg := &registry{}
	reg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			if challenge != "" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(challenge, r.Host))
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		answer(w, r, func(src io.Reader) {
			buf := make([]byte, 32<<10)
			for {
				n, rerr := src.Read(buf)
				if n > 0 {
					m, werr := w.Write(buf[:n])
					reg.written.Add(int64(m))
					if werr != nil {
						reg.cut.Store(true)
						return
					}
				}
				if rerr != nil {
					return
				}
			}
		})
	}))
	t.Cleanup(reg.Close)
	return reg
}

func (reg *registry) image(repo, digest string) string {
	return strings.TrimPrefix(reg.URL, "http://") + "/" + repo + "@" + digest
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func testPod(image string) (*corev1.Pod, *corev1.Container) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
	}
	return p, &p.Spec.Containers[0]
}

// newTestResolver returns a resolver that may reach every registry on
// 127.0.0.1, where httptest serves them, over plain HTTP.
func newTestResolver(options ...Option) *Resolver {
	return newStrictResolver(append([]Option{WithInsecureRegistries([]string{"127.0.0.1"})}, options...)...)
}

// newStrictResolver returns a resolver with the defaults of
// klock-webhook: no insecure registry, unless options list one.
func newStrictResolver(options ...Option) *Resolver {
	return NewResolver(fake.NewClientset(), v1.Platform{OS: "linux", Architecture: "amd64"}, 8, options...)
}

// resolve runs one resolution under a generous outer deadline, so that a
// resolver without bounds fails the test instead of hanging it, and
// reports how long it took and how much it allocated.
func resolve(t *testing.T, r *Resolver, image string) (err error, took time.Duration, allocated uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	pod, c := testPod(image)
	cmd, err := r.Resolve(ctx, pod, c)
	took = time.Since(start)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatalf("resolved %+v, want an error", cmd)
	}
	return err, took, after.TotalAlloc - before.TotalAlloc
}

const anyDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

func TestResolveBoundsWhatItReads(t *testing.T) {
	manifest := func(configSize int64, configDigest string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":%q},"layers":[]}`, configSize, configDigest))
	}
	const huge = 256 << 20 // far over every cap, made as it is sent
	bigConfig := manifest(huge, anyDigest)

	for _, tc := range []struct {
		name      string
		challenge string
		answer    func(w http.ResponseWriter, r *http.Request, body func(io.Reader))
		digest    string
		what      string // what the TooLargeError names
	}{
		{name: "a token of 256 MiB",
			challenge: `Bearer realm="http://%s/token",service="test"`,
			answer: func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
				if r.URL.Path != "/token" {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				body(&endless{n: huge})
			},
			digest: anyDigest, what: "token or ping answer"},
		{name: "an error body of 256 MiB",
			answer: func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
				w.WriteHeader(http.StatusInternalServerError)
				body(&endless{n: huge})
			},
			digest: anyDigest, what: "error body"},
		{name: "a manifest of 256 MiB, without Content-Length",
			answer: func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.WriteHeader(http.StatusOK)
				body(&endless{n: huge})
			},
			digest: anyDigest, what: "manifest or config"},
		{name: "a manifest whose Content-Length says 256 MiB",
			answer: func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Content-Length", fmt.Sprint(huge))
				w.WriteHeader(http.StatusOK)
				body(&endless{n: huge})
			},
			digest: anyDigest, what: "manifest or config"},
		{name: "a config blob of 256 MiB",
			answer: func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
				if strings.Contains(r.URL.Path, "/manifests/") {
					w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
					w.Write(bigConfig)
					return
				}
				w.WriteHeader(http.StatusOK)
				body(&endless{n: huge})
			},
			digest: sha(bigConfig), what: "manifest or config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := startRegistry(t, tc.challenge, tc.answer)
			err, took, allocated := resolve(t, newTestResolver(), reg.image("big/image", tc.digest))
			reg.Close() // waits for the handler: its counts are final
			t.Logf("error %q after %s, %d KiB allocated, the registry wrote %d KiB (connection cut: %v)",
				err, took.Round(time.Millisecond), allocated>>10, reg.written.Load()>>10, reg.cut.Load())
			var tooLarge *TooLargeError
			if !errors.As(err, &tooLarge) || tooLarge.What != tc.what {
				t.Errorf("error %v, want the registry's %s over its limit", err, tc.what)
			}
			// Loopback socket buffers hold a few MiB that the client never
			// reads; a resolver that read the body would account for all
			// 256 MiB.
			if !reg.cut.Load() {
				t.Errorf("the registry wrote %d MiB and the client never hung up", reg.written.Load()>>20)
			}
			if w := reg.written.Load(); w > 32<<20 {
				t.Errorf("the registry wrote %d MiB before the client hung up, want at most 32 MiB", w>>20)
			}
			if allocated > 32<<20 {
				t.Errorf("the resolution allocated %d MiB, want at most 32 MiB", allocated>>20)
			}
		})
	}
}

func TestResolveEndsAtItsDeadline(t *testing.T) {
	reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
		<-r.Context().Done() // never answers, until the client hangs up
	})
	err, took, _ := resolve(t, newTestResolver(WithTimeout(500*time.Millisecond)), reg.image("slow/image", anyDigest))
	t.Logf("error %q after %s", err, took.Round(time.Millisecond))
	if want := "the registry did not answer within 500ms"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}
}

func TestResolveErrorsHoldNothingTheRegistrySent(t *testing.T) {
	structured := `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"` + marker + `","detail":"` + marker + `"}]}`
	for _, tc := range []struct {
		name     string
		status   int
		body     string
		location string
		want     string
	}{
		{name: "a structured 404", status: http.StatusNotFound, body: structured,
			want: "the registry answered HTTP 404 Not Found (MANIFEST_UNKNOWN)"},
		{name: "a plain-text 500", status: http.StatusInternalServerError, body: marker,
			want: "the registry answered HTTP 500 Internal Server Error"},
		{name: "a 403 with an unknown code", status: http.StatusForbidden,
			body: `{"errors":[{"code":"` + marker + `","message":"` + marker + `"}]}`,
			want: "the registry answered HTTP 403 Forbidden (the pod's imagePullSecrets and its service account's hold no credentials this registry accepts)"},
		{name: "a manifest that is not JSON", status: http.StatusOK, body: marker,
			want: "the registry sent a manifest, config or token that is not valid JSON for it"},
		{
			// Go's client quotes a Location it cannot parse in its error,
			// twice: the registry would write into the denial.
			name: "a redirect to a Location that does not parse", status: http.StatusFound, location: "http://x/ " + marker + " %zz",
			want: "cannot reach the registry: the request failed (a redirect it sent, or the network)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				if tc.location != "" {
					w.Header().Set("Location", tc.location)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			image := reg.image("some/image", anyDigest)
			if tc.status == http.StatusOK {
				image = reg.image("some/image", sha([]byte(tc.body)))
			}
			err, _, _ := resolve(t, newTestResolver(), image)
			if strings.Contains(err.Error(), marker) {
				t.Errorf("error %q holds what the registry sent", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func TestResolveDoesNotRetryAStatus(t *testing.T) {
	var requests atomic.Int64
	reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	err, took, _ := resolve(t, newTestResolver(), reg.image("busy/image", anyDigest))
	t.Logf("error %q after %s", err, took.Round(time.Millisecond))
	if n := requests.Load(); n != 1 {
		t.Errorf("%d requests for the manifest, want 1: each retry costs another body and more of the deadline", n)
	}
}

func TestResolveNamesAMissingPlatform(t *testing.T) {
	reg := httptest.NewServer(ggcrregistry.New())
	t.Cleanup(reg.Close)
	arm64 := v1.Platform{OS: "linux", Architecture: "arm64"}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "arm64", Config: v1.Config{Entrypoint: []string{"/app"}}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/arm/only:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &arm64}})); err != nil {
		t.Fatal(err)
	}
	err, _, _ = resolve(t, newTestResolver(), ref.String())
	if want := "the image has no build for platform linux/amd64 (the pod's nodeSelector, else --default-platform)"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// Registries such as Docker Hub redirect blobs to storage elsewhere: the
// config keeps the cap of a config there, not that of a token.
func TestResolveFollowsABlobRedirectWithTheConfigCap(t *testing.T) {
	config := []byte(`{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/app"]}}` + strings.Repeat(" ", 100<<10))
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":%q},"layers":[]}`, len(config), sha(config)))
	reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
		switch {
		case strings.Contains(r.URL.Path, "/manifests/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Write(manifest)
		case strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, "/storage/config", http.StatusTemporaryRedirect)
		case r.URL.Path == "/storage/config":
			w.Write(config)
		default:
			http.NotFound(w, r)
		}
	})
	pod, c := testPod(reg.image("redirected/image", sha(manifest)))
	got, err := newTestResolver().Resolve(context.Background(), pod, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entrypoint) != 1 || got.Entrypoint[0] != "/app" {
		t.Errorf("entrypoint %q, want [/app]", got.Entrypoint)
	}
}

// What an image says it runs is cached per digest, and a registry can
// invent digests: an ENTRYPOINT of a million empty strings must not be
// kept. A normal one still resolves from the same kind of config.
func TestResolveBoundsTheCommandAnImageMayGive(t *testing.T) {
	reg := httptest.NewServer(ggcrregistry.New())
	t.Cleanup(reg.Close)
	push := func(repo string, entrypoint []string) string {
		t.Helper()
		img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{Entrypoint: entrypoint}})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/" + repo + ":v1")
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		return ref.String()
	}
	err, _, _ := resolve(t, newTestResolver(), push("huge", make([]string, maxArgs+1)))
	if err == nil || !strings.Contains(err.Error(), "over the 1024 arguments or 64 KiB klock takes from an image") {
		t.Errorf("an ENTRYPOINT of %d arguments: error %v, want one saying it is over the bound", maxArgs+1, err)
	}
	pod, c := testPod(push("normal", []string{"/app", "--serve"}))
	got, err := newTestResolver().Resolve(context.Background(), pod, c)
	if err != nil || len(got.Entrypoint) != 2 || got.Entrypoint[0] != "/app" {
		t.Errorf("a normal ENTRYPOINT: got %+v, %v", got, err)
	}
}

// One namespace whose registry never answers takes at most its share of
// the resolutions under way: another namespace's image is read meanwhile,
// and a third resolution of the first namespace is refused at once, saying
// why.
func TestResolveSharesTurnsBetweenNamespaces(t *testing.T) {
	hung := make(chan struct{})
	var reached atomic.Int32
	reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
		reached.Add(1)
		select {
		case <-hung:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNotFound)
	})
	defer close(hung)
	res := newTestResolver(WithTimeout(10 * time.Second))
	podIn := func(ns, image string) (*corev1.Pod, *corev1.Container) {
		p, c := testPod(image)
		p.Namespace = ns
		return p, c
	}
	for range maxPerNamespace {
		p, c := podIn("greedy", reg.image("slow/image", anyDigest))
		go func() { _, _ = res.Resolve(context.Background(), p, c) }()
	}
	for reached.Load() < maxPerNamespace {
		time.Sleep(10 * time.Millisecond)
	}
	p, c := podIn("greedy", reg.image("slow/image", anyDigest))
	_, err := res.Resolve(context.Background(), p, c)
	if want := "the webhook is already reading 2 images for namespace greedy, its most at once"; err == nil || err.Error() != want {
		t.Errorf("a third resolution of the namespace: %v, want %q", err, want)
	}
	p, c = podIn("other", reg.image("slow/image", anyDigest))
	go func() { _, _ = res.Resolve(context.Background(), p, c) }()
	deadline := time.Now().Add(5 * time.Second)
	for reached.Load() < maxPerNamespace+1 {
		if time.Now().After(deadline) {
			t.Fatal("another namespace's image was not read while the first namespace's hung")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
