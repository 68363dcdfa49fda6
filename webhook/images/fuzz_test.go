package images

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// script is what the hostile registry answers, request after request,
// read from the fuzz input.
type script struct {
	mu   sync.Mutex
	data []byte
}

func (s *script) next() byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.data) == 0 {
		return 0
	}
	b := s.data[0]
	s.data = s.data[1:]
	return b
}

func (s *script) bytes(n int) string {
	var b strings.Builder
	for range n {
		b.WriteByte(s.next())
	}
	return b.String()
}

// FuzzResolve runs the resolver against a registry whose every answer the
// fuzz input writes: statuses, sizes, Content-Length lies, redirects and
// token realms to hosts it must not reach, garbage manifests and configs.
// The resolver must not panic, must return, must never connect to the
// forbidden server, and must never put the registry's text in its error.
func FuzzResolve(f *testing.F) {
	bad := &forbidden{}
	bad.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"token":"`+marker+`"}`)
	}))
	bad.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			bad.conns.Add(1)
		}
	}
	bad.Start()
	defer bad.Close()
	q := bad.port()
	// Where the input may send the resolver: all must be refused.
	targets := []string{
		"http://127.0.0.1:" + q, "https://127.0.0.1:" + q, "http://localhost:" + q, "https://localhost:" + q,
		"https://0.0.0.0:" + q, "http://[::ffff:127.0.0.1]:" + q, "https://kubernetes.default.svc:" + q,
		"http://169.254.169.254", "https://169.254.169.254", "https://[fd00:ec2::254]", "http://127.0.0.1.:" + q,
		"HTTP://LOCALHOST:" + q, "https://127.1:" + q, "ftp://127.0.0.1:" + q, "//localhost:" + q, "https://user@127.0.0.1:" + q,
	}
	var s script
	var self string // the registry's own URL: redirects and realms may stay on it
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := func() string {
			i := int(s.next())
			if i%4 == 0 {
				return self + "/v2/" + s.bytes(int(s.next()%8)) // its own host, any path
			}
			return targets[i%len(targets)] + "/" + s.bytes(int(s.next()%4))
		}
		switch op := s.next(); op % 8 {
		case 0: // a redirect, of any kind
			w.Header().Set("Location", target())
			w.WriteHeader([]int{301, 302, 303, 307, 308}[int(s.next())%5])
		case 1: // a challenge, whose realm is anywhere
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service=%q,scope=%q`, target(), s.bytes(2), s.bytes(2)))
			if s.next()%2 == 0 {
				w.Header().Add("WWW-Authenticate", "Basic realm="+target()+s.bytes(4))
			}
			w.WriteHeader(http.StatusUnauthorized)
		case 2: // any status, with the marker
			w.WriteHeader(100 + int(s.next())*2)
			io.WriteString(w, marker+s.bytes(8))
		case 3: // a Content-Length that lies
			w.Header().Set("Content-Length", fmt.Sprint(int(s.next())<<int(s.next()%24)))
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, marker)
		case 4, 5: // a manifest or an index, maybe garbage
			media := []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
				"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json", marker}
			w.Header().Set("Content-Type", media[int(s.next())%len(media)])
			w.Header().Set("Docker-Content-Digest", anyDigest)
			io.WriteString(w, fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"size":%d,"digest":%q},"manifests":[{"digest":%q,"platform":{"os":"linux","architecture":"amd64"}}],"x":%q}`,
				media[int(s.next())%len(media)], s.next(), anyDigest, anyDigest, marker+s.bytes(int(s.next()%16))))
		case 6: // a config, maybe garbage
			io.WriteString(w, `{"config":{"Entrypoint":["`+marker+`"],"Cmd":`+s.bytes(int(s.next()%16))+`}}`)
		default: // the ping's answer
			w.WriteHeader(http.StatusOK)
		}
	}))
	defer reg.Close()
	self = reg.URL
	host := hostOf(reg)

	f.Add([]byte{0, 1, 0, 0})                       // a redirect to the forbidden host
	f.Add([]byte{7, 1, 1, 0, 0, 0, 0, 0, 0})        // a realm on it
	f.Add([]byte{1, 7, 0, 0, 0, 0, 1, 0})           // a realm, then a redirect
	f.Add([]byte{7, 4, 1, 0, 0, 9, 6, 4})           // an index
	f.Add([]byte{7, 3, 255, 23})                    // a Content-Length of 2 GiB
	f.Add([]byte{1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 10}) // a realm on the registry, then redirects
	f.Fuzz(func(t *testing.T, data []byte) {
		s.mu.Lock()
		s.data = data
		s.mu.Unlock()
		r := newStrictResolver(WithInsecureRegistries([]string{host}), WithTimeout(300*time.Millisecond))
		r.policy.lookup = func(_ context.Context, name string) ([]netip.Addr, error) {
			if normal(name) == "localhost" {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true} // no network
		}
		defer func() {
			for _, tr := range []http.RoundTripper{r.direct, r.public} {
				tr.(*limitTransport).inner.(*http.Transport).CloseIdleConnections()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pod, c := testPod(host + "/fuzz/image:v1")
		done := make(chan error, 1)
		go func() {
			_, err := r.Resolve(ctx, pod, c)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil && (strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), "\n")) {
				t.Errorf("error %q holds what the registry sent", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Resolve did not return within 5s, with a deadline of 300ms")
		}
		if n := bad.conns.Load(); n != 0 {
			t.Fatalf("the forbidden server got %d connections", n)
		}
	})
}
