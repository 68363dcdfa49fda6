package images

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// forbidden is a server the resolver must never reach: it counts every
// connection, so that a request refused after connecting counts too.
type forbidden struct {
	*httptest.Server
	conns atomic.Int64
}

func startForbidden(t *testing.T) *forbidden {
	t.Helper()
	f := &forbidden{}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token":"`+marker+`"}`)
	}))
	f.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.Start()
	t.Cleanup(f.Close)
	return f
}

func (f *forbidden) port() string { _, p, _ := net.SplitHostPort(f.Listener.Addr().String()); return p }

func hostOf(s *httptest.Server) string {
	return strings.TrimPrefix(strings.TrimPrefix(s.URL, "http://"), "https://")
}

// wantRefused checks that err is a refusal of kind k for request via,
// in the fixed words of RefusedError naming registry.
func wantRefused(t *testing.T, err error, registry string, k Kind, via Via) {
	t.Helper()
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Kind != k || refused.Via != via {
		t.Fatalf("error %q (%#v), want a refusal of %s for the %s request", err, refused, k, via)
	}
	if !strings.Contains(err.Error(), "registry "+registry+" ") {
		t.Errorf("error %q does not name registry %s", err, registry)
	}
	if strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q holds text from the network, or more than one line", err)
	}
}

// A token realm elsewhere is followed only to hosts the admin listed; the
// Docker Hub pair is built in.
func TestResolveRefusesATokenRealmOnAnotherHost(t *testing.T) {
	bad := startForbidden(t)
	for _, tc := range []struct {
		name, realm string
		options     []Option
		kind        Kind
	}{
		{name: "another host name", realm: "http://localhost:" + bad.port() + "/token", kind: KindRealmHost},
		{name: "the same host, another port, plain HTTP not listed", realm: "http://%s" + "/../token", kind: KindPlainHTTP},
		{name: "cloud metadata, even when listed", realm: "http://169.254.169.254/latest/meta-data",
			options: []Option{WithAuthHosts([]string{"169.254.169.254"}), WithInsecureRegistries([]string{"169.254.169.254"})}, kind: KindLinkLocal},
		{name: "AWS's IPv6 metadata, even when listed", realm: "https://[fd00:ec2::254]/token",
			options: []Option{WithAuthHosts([]string{"[fd00:ec2::254]"})}, kind: KindLinkLocal},
		{name: "a loopback host listed for tokens but not as a registry", realm: "https://localhost:" + bad.port() + "/token",
			options: []Option{WithAuthHosts([]string{"localhost"})}, kind: KindLoopback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {})
			realm := tc.realm
			if strings.Contains(realm, "%s") {
				// The forbidden server's port, on the registry's host name.
				realm = "http://127.0.0.1:" + bad.port() + "/token"
			}
			reg.Config.Handler = challenging(realm, reg.Config.Handler)
			// Only the registry's own port is listed.
			options := append([]Option{WithInsecureRegistries([]string{hostOf(reg.Server)})}, tc.options...)
			err, _, _ := resolve(t, newStrictResolver(options...), reg.image("some/image", anyDigest))
			wantRefused(t, err, hostOf(reg.Server), tc.kind, ViaRealm)
			if n := bad.conns.Load(); n != 0 {
				t.Errorf("the forbidden host got %d connections", n)
			}
		})
	}
}

// challenging answers the ping with a Bearer challenge for realm.
func challenging(realm string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" || r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test"`, realm))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A realm on a listed host is followed, and its token used.
func TestResolveTakesATokenFromAListedAuthHost(t *testing.T) {
	var tokens atomic.Int64
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens.Add(1)
		io.WriteString(w, `{"token":"t0k3n"}`)
	}))
	t.Cleanup(auth.Close)
	real := ggcrregistry.New()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t0k3n" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://localhost:`+strings.Split(hostOf(auth), ":")[1]+`/token",service="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		real.ServeHTTP(w, r)
	}))
	t.Cleanup(reg.Close)
	image := pushTo(t, hostOf(reg), "authed/image", "t0k3n")
	r := newTestResolver(WithAuthHosts([]string{"localhost"}), WithInsecureRegistries([]string{"localhost"}))
	pod, c := testPod(image)
	got, err := r.Resolve(context.Background(), pod, c)
	if err != nil || len(got.Entrypoint) != 1 || got.Entrypoint[0] != "/app" {
		t.Fatalf("got %+v, %v; want entrypoint [/app]", got, err)
	}
	if tokens.Load() == 0 {
		t.Error("the token service was never asked")
	}
}

func TestResolveRefusesRedirects(t *testing.T) {
	bad := startForbidden(t)
	tlsReg := func(t *testing.T, location string) *httptest.Server {
		s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				return
			}
			http.Redirect(w, r, location, http.StatusTemporaryRedirect)
		}))
		t.Cleanup(s.Close)
		return s
	}
	for _, tc := range []struct {
		name, location string
		tls            bool
		kind           Kind
	}{
		{name: "to another host, plain HTTP", location: "http://localhost:" + bad.port() + "/x", kind: KindOtherHost},
		{name: "to another host, HTTPS, loopback", location: "https://localhost:" + bad.port() + "/x", kind: KindLoopback},
		{name: "to cloud metadata", location: "http://169.254.169.254/latest/meta-data/", kind: KindOtherHost},
		{name: "to cloud metadata over HTTPS", location: "https://169.254.169.254/latest/meta-data/", kind: KindLinkLocal},
		{name: "to the registry's host name, another port, plain HTTP not listed", location: "http://127.0.0.1:" + bad.port() + "/x", kind: KindPlainHTTP},
		{name: "to the registry's host name, another port, HTTPS, loopback not listed", location: "https://127.0.0.1:" + bad.port() + "/x", kind: KindLoopback},
		{name: "from HTTPS to plain HTTP on a listed host", location: "http://127.0.0.1:" + bad.port() + "/x", tls: true, kind: KindDowngrade},
		{name: "to 0.0.0.0, which Linux takes for this host", location: "https://0.0.0.0:" + bad.port() + "/x", kind: KindNotUnicast},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var host string
			var r *Resolver
			if tc.tls {
				s := tlsReg(t, tc.location)
				host = hostOf(s)
				// Both ports listed: only the downgrade is wrong.
				r = newStrictResolver(WithInsecureRegistries([]string{host, "127.0.0.1:" + bad.port()}))
				trust(r, s)
			} else {
				reg := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) {
					http.Redirect(w, r, tc.location, http.StatusFound)
				})
				host = hostOf(reg.Server)
				r = newStrictResolver(WithInsecureRegistries([]string{host}))
			}
			err, _, _ := resolve(t, r, host+"/some/image@"+anyDigest)
			wantRefused(t, err, host, tc.kind, ViaRedirect)
			if n := bad.conns.Load(); n != 0 {
				t.Errorf("the forbidden host got %d connections", n)
			}
		})
	}
}

// trust makes r trust s's certificate, as it would a registry's.
func trust(r *Resolver, s *httptest.Server) {
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	for _, t := range []http.RoundTripper{r.direct, r.public} {
		t.(*limitTransport).inner.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool}
	}
}

func TestResolveRefusesRegistryAddresses(t *testing.T) {
	reg := startForbidden(t)
	port := reg.port()
	var lookups atomic.Int64
	names := map[string]string{"localhost": "127.0.0.1", "rebind.test": "127.0.0.1", "meta.test": "169.254.169.254", "mapped.test": "::ffff:169.254.169.254", "nat64.test": "64:ff9b::a9fe:a9fe"}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		lookups.Add(1)
		if ip, ok := names[host]; ok {
			return []netip.Addr{netip.MustParseAddr(ip)}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	for _, tc := range []struct {
		name, registry string
		options        []Option
		env            string
		kind           Kind
		noLookup       bool
	}{
		{name: "loopback, not listed", registry: "localhost:" + port, kind: KindLoopback},
		{name: "loopback, another port listed", registry: "127.0.0.1:" + port, options: []Option{WithInsecureRegistries([]string{"127.0.0.1:1"})}, kind: KindLoopback},
		{name: "a name that resolves to loopback, its address listed", registry: "rebind.test:" + port, options: []Option{WithInsecureRegistries([]string{"127.0.0.1"})}, kind: KindLoopback},
		{name: "0.0.0.0, even when listed", registry: "0.0.0.0:" + port, options: []Option{WithInsecureRegistries([]string{"0.0.0.0"})}, kind: KindNotUnicast},
		{name: "cloud metadata", registry: "169.254.169.254", kind: KindLinkLocal},
		{name: "a name that resolves to cloud metadata", registry: "meta.test", kind: KindLinkLocal},
		{name: "cloud metadata, IPv4-mapped", registry: "mapped.test", kind: KindLinkLocal},
		{name: "cloud metadata through NAT64", registry: "nat64.test", kind: KindLinkLocal},
		{name: "AWS's IPv6 metadata", registry: "[fd00:ec2::254]", kind: KindLinkLocal},
		{name: "the kubernetes Service's name", registry: "kubernetes.default.svc:" + port, kind: KindAPIServer, noLookup: true},
		{name: "the kubernetes Service's ClusterIP, even when listed", registry: "127.0.0.1:" + port, env: "127.0.0.1", kind: KindAPIServer},
		{name: "the API server's address", registry: "127.0.0.1:" + port,
			options: []Option{WithAPIServer("https://127.0.0.1:" + port)}, kind: KindAPIServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBERNETES_SERVICE_HOST", tc.env)
			r := newStrictResolver(append([]Option{WithInsecureRegistries([]string{"127.0.0.1:" + port, "localhost:1"})}, tc.options...)...)
			if tc.kind != KindAPIServer {
				r = newStrictResolver(tc.options...)
			}
			r.policy.lookup = lookup
			lookups.Store(0)
			err, _, _ := resolve(t, r, tc.registry+"/some/image@"+anyDigest)
			wantRefused(t, err, tc.registry, tc.kind, ViaRegistry)
			if n := reg.conns.Load(); n != 0 {
				t.Errorf("the forbidden host got %d connections", n)
			}
			if tc.noLookup && lookups.Load() != 0 {
				t.Errorf("%d DNS lookups, want none", lookups.Load())
			}
		})
	}
	// The API server's address is refused on its port only.
	other := startRegistry(t, "", func(w http.ResponseWriter, r *http.Request, _ func(io.Reader)) { http.NotFound(w, r) })
	err, _, _ := resolve(t, newTestResolver(WithAPIServer("https://127.0.0.1:"+port)), other.image("some/image", anyDigest))
	if want := "the registry answered HTTP 404 Not Found"; err.Error() != want {
		t.Errorf("a registry on another port of the API server's address: error %q, want %q", err, want)
	}
}

// The rules, one request at a time, where no test server can stand: a
// public host, Docker Hub, a private registry not listed.
func TestGuardRoutes(t *testing.T) {
	r := newStrictResolver(WithInsecureRegistries([]string{"10.0.0.6:5000"}), WithAuthHosts([]string{"gitlab.com"}))
	newGuard := func(registry string) *guard {
		host, _ := splitRegistry(registry)
		return &guard{policy: r.policy, registry: registry, host: host, direct: r.direct, public: r.public}
	}
	request := func(rawURL string, from *http.Request) *http.Request {
		req, err := http.NewRequest(http.MethodGet, rawURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if from != nil {
			req.Response = &http.Response{Request: from}
		}
		return req
	}
	challenge := func(g *guard, realm string) {
		g.noteRealms(&http.Response{Header: http.Header{"Www-Authenticate": {`Bearer realm="` + realm + `",service="x"`}}})
	}
	hub := newGuard("index.docker.io")
	challenge(hub, "https://auth.docker.io/token")
	blob := request("https://index.docker.io/v2/library/busybox/blobs/sha256:abc", nil)
	gl := newGuard("registry.gitlab.com")
	challenge(gl, "https://gitlab.com/jwt/auth")
	evil := newGuard("evil.example")
	challenge(evil, "https://auth.docker.io/token")
	same := newGuard("same.example")
	challenge(same, "https://same.example:5001/v2/x/blobs/y")
	for _, tc := range []struct {
		name string
		g    *guard
		req  *http.Request
		kind Kind // "": allowed
		want http.RoundTripper
		role role
	}{
		{name: "Docker Hub's token service", g: hub, req: request("https://auth.docker.io/token?scope=x", nil), want: r.direct, role: roleToken},
		{name: "Docker Hub's blob, redirected to its CDN", g: hub, req: request("https://production.cloudflare.docker.com/blob", blob), want: r.public, role: roleContent},
		{name: "a blob redirected to plain HTTP", g: hub, req: request("http://production.cloudflare.docker.com/blob", blob), kind: KindDowngrade},
		{name: "the ping redirected elsewhere", g: hub, req: request("https://elsewhere.example/v2/", request("https://index.docker.io/v2/", nil)), kind: KindOtherHost},
		{name: "GitLab's token service, listed", g: gl, req: request("https://gitlab.com/jwt/auth?scope=x", nil), want: r.direct, role: roleToken},
		{name: "auth.docker.io for another registry", g: evil, req: request("https://auth.docker.io/token", nil), kind: KindRealmHost},
		{name: "a request to a host no realm named", g: hub, req: request("https://elsewhere.example/token", nil), kind: KindOtherHost},
		{name: "a realm shaped like a blob gets the token cap", g: same, req: request("https://same.example:5001/v2/x/blobs/y?scope=z", nil), want: r.direct, role: roleToken},
		{name: "a private registry not listed, plain HTTP", g: newGuard("10.0.0.5:5000"), req: request("http://10.0.0.5:5000/v2/", nil), kind: KindPlainHTTP},
		{name: "a private registry not listed, HTTPS", g: newGuard("10.0.0.5:5000"), req: request("https://10.0.0.5:5000/v2/", nil), want: r.direct},
		{name: "a private registry listed, plain HTTP", g: newGuard("10.0.0.6:5000"), req: request("http://10.0.0.6:5000/v2/", nil), want: r.direct},
		{name: "a listed registry's other port, plain HTTP", g: newGuard("10.0.0.6:5000"), req: request("http://10.0.0.6:5001/v2/", nil), kind: KindPlainHTTP},
		{name: "a scheme other than HTTP", g: hub, req: request("ftp://index.docker.io/v2/", nil), kind: KindBadScheme},
	} {
		t.Run(tc.name, func(t *testing.T) {
			through, rl, _, err := tc.g.route(tc.req)
			if tc.kind != "" {
				var refused *RefusedError
				if !errors.As(err, &refused) || refused.Kind != tc.kind {
					t.Fatalf("error %v, want a refusal of %s", err, tc.kind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if through != tc.want || rl != tc.role {
				t.Errorf("through the public transport %v, role %d; want %v, %d", through == r.public, rl, tc.want == r.public, tc.role)
			}
		})
	}
}

func TestPolicyRefuses(t *testing.T) {
	p := newPolicy()
	for ip, want := range map[string]Kind{
		"169.254.169.254": KindLinkLocal, "fe80::1": KindLinkLocal, "fd00:ec2::254": KindLinkLocal, "::ffff:169.254.169.254": KindLinkLocal,
		"100.100.100.200": KindLinkLocal, "127.0.0.1": KindLoopback, "127.8.9.10": KindLoopback, "::1": KindLoopback,
		"0.0.0.0": KindNotUnicast, "::": KindNotUnicast, "0.1.2.3": KindNotUnicast, "224.0.0.1": KindNotUnicast, "ff02::1": KindNotUnicast,
		"255.255.255.255": KindNotUnicast, "10.1.2.3": "", "192.168.0.1": "", "fd12::1": "", "8.8.8.8": "", "64:ff9b::808:808": "",
		"64:ff9b:1::a9fe:a9fe": KindNotUnicast, "2002:a9fe:a9fe::1": KindNotUnicast, "::a9fe:a9fe": KindNotUnicast,
	} {
		if got := p.refuse("h", "443", netip.MustParseAddr(ip), false); got != want {
			t.Errorf("%s: %q, want %q", ip, got, want)
		}
	}
	for ip, want := range map[string]Kind{"10.1.2.3": KindPrivate, "100.64.0.1": KindPrivate, "fd12::1": KindPrivate, "8.8.8.8": ""} {
		if got := p.refuse("h", "443", netip.MustParseAddr(ip), true); got != want {
			t.Errorf("%s, public only: %q, want %q", ip, got, want)
		}
	}
}

func TestRealmValues(t *testing.T) {
	for h, want := range map[string]string{
		`Bearer realm="https://a/token",service="x"`:        "https://a/token",
		`Bearer service="x", REALM = "https://a/t\"o"`:      `https://a/t"o`,
		`Basic realm=plain, Bearer realm="https://b/"`:      "plain https://b/",
		`Bearer realmx="no", realm`:                         "",
		`Bearer scope="realm=https://c/",realm="https://d"`: "https://c/\" https://d",
	} {
		if got := strings.Join(realmValues(h), " "); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
}

// go-containerregistry's transport retries a connection reset three
// times, with sleeps that ignore the resolution's deadline.
func TestResolveDoesNotRetryAConnectionReset(t *testing.T) {
	var manifests atomic.Int64
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Connection", "close") // the manifest request dials anew
			return
		}
		manifests.Add(1)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		conn.(*net.TCPConn).SetLinger(0) // a reset, not a close
		conn.Close()
	}))
	t.Cleanup(reg.Close)
	start := time.Now()
	err, _, _ := resolve(t, newTestResolver(), hostOf(reg)+"/reset/image@"+anyDigest)
	t.Logf("error %q after %s", err, time.Since(start).Round(time.Millisecond))
	if n := manifests.Load(); n != 1 {
		t.Errorf("%d requests for the manifest, want 1", n)
	}
	if want := "cannot reach the registry: the connection was closed before it answered"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// A token realm is capped as a token, whatever its path looks like.
func TestResolveCapsATokenByItsRole(t *testing.T) {
	reg := startRegistry(t, `Bearer realm="http://%s/v2/x/blobs/sha256:0",service="test"`, func(w http.ResponseWriter, r *http.Request, body func(io.Reader)) {
		if r.URL.Path != "/v2/x/blobs/sha256:0" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
		body(&endless{n: MaxOtherBytes * 8})
	})
	err, _, _ := resolve(t, newTestResolver(), reg.image("some/image", anyDigest))
	var tooLarge *TooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.What != "token or ping answer" || tooLarge.Limit != MaxOtherBytes {
		t.Errorf("error %v, want the token over its %d bytes", err, MaxOtherBytes)
	}
}

func TestParseHost(t *testing.T) {
	for s, want := range map[string]string{"10.0.0.5:5000": "10.0.0.5 5000", "Reg.Local.": "reg.local ", "[fd00::1]:5000": "fd00::1 5000", "fd00::1": "error",
		"http://x": "error", "x/y": "error", "": "error", "x:0": "error", "x:": "error", "u@x": "error"} {
		h, p, err := ParseHost(s)
		got := h + " " + p
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("%q: %q, want %q", s, got, want)
		}
	}
}

// pushTo pushes an image whose ENTRYPOINT is /app to registry, with a
// registry token, and returns its reference by digest.
func pushTo(t *testing.T, registry, repo, token string) string {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{Entrypoint: []string{"/app"}}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(registry + "/" + repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(authn.FromConfig(authn.AuthConfig{RegistryToken: token}))); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return registry + "/" + repo + "@" + d.String()
}
