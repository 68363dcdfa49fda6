package images

import (
	"fmt"
	"io"
	"net/http"
)

// Limits on what the resolver reads from a registry. go-containerregistry
// reads error bodies, token responses, manifests (up to 100 MiB) and
// configs whole, and the registry is the pod author's choice: without these
// a registry could make the webhook buffer as much as it likes.
const (
	// MaxContentBytes bounds a manifest, an index or a config blob: real
	// ones are a few KiB, rarely over a hundred. Parsing a manifest builds
	// every entry it lists, so what a body may hold is what parsing it may
	// cost, several resolutions at once.
	MaxContentBytes = 1 << 20
	// MaxOtherBytes bounds a 2xx answer that is neither, such as a token
	// or the /v2/ ping; real tokens are a few KiB.
	MaxOtherBytes = 16 << 10
	// MaxErrorBytes bounds a non-2xx body, of which only the status and
	// error code are used.
	MaxErrorBytes = 4 << 10
	// maxHeaderBytes bounds the response headers.
	maxHeaderBytes = 64 << 10
)

// TooLargeError says that a registry's answer was over its limit.
type TooLargeError struct {
	What       string // "manifest or config", "error body", ...
	StatusCode int
	Limit      int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("the registry's %s (HTTP %d) is over the %s limit", e.What, e.StatusCode, byteSize(e.Limit))
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// limitTransport caps every response body that passes through it: a body
// over its cap fails the read that crosses it (and every read after), so
// no reader above, go-containerregistry's io.ReadAll included, can hold
// more than the cap. It sits below go-containerregistry's own transports
// (auth, retries), so token exchanges and error bodies pass through it too,
// and below the guard, which tells it what each request asks for.
type limitTransport struct {
	inner http.RoundTripper
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	if err != nil || resp.Body == nil || resp.Body == http.NoBody {
		return resp, err
	}
	what, limit := limitFor(req, resp)
	tooLarge := &TooLargeError{What: what, StatusCode: resp.StatusCode, Limit: limit}
	if resp.ContentLength > limit {
		// Said up front: read nothing, and drop the connection rather
		// than drain it.
		resp.Body.Close()
		resp.Body = &failingBody{err: tooLarge}
		resp.ContentLength = -1
		return resp, nil
	}
	resp.Body = &limitedBody{body: resp.Body, left: limit, err: tooLarge}
	return resp, nil
}

// limitFor names what resp answers and its cap. The role comes from the
// guard, which knows a token request by its realm: a realm whose path
// looks like a blob's still gets a token's cap. A redirected request has
// the role of the first of its chain, so a blob moved to storage
// elsewhere keeps a blob's cap.
func limitFor(req *http.Request, resp *http.Response) (string, int64) {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "error body", MaxErrorBytes
	}
	if roleOf(req) == roleContent {
		return "manifest or config", MaxContentBytes
	}
	return "token or ping answer", MaxOtherBytes
}

// limitedBody returns err once more than left bytes would have been read.
type limitedBody struct {
	body io.ReadCloser
	left int64
	err  error
	done bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, b.err
	}
	// Read one byte past the cap to tell a body of exactly the cap from
	// a longer one.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.body.Read(p)
	if int64(n) > b.left {
		b.done = true
		b.left = 0
		return 0, b.err
	}
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.body.Close() }

// failingBody fails every read.
type failingBody struct{ err error }

func (b *failingBody) Read([]byte) (int, error) { return 0, b.err }
func (b *failingBody) Close() error             { return nil }
