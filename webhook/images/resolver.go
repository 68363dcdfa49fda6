// Package images reads what an image runs: the ENTRYPOINT and CMD in its
// config, from its registry, with the credentials the kubelet would use,
// for the platform the pod will run on, and keeps what it read by digest.
// The pod handler asks it when a container sets no command.
package images

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/lru"

	"github.com/klock-io/klock/webhook/wrap"
)

// Resolver reads ENTRYPOINT and CMD from image configs in their
// registries, with the credentials the kubelet would use: the pod's
// imagePullSecrets and its service account's. Configs are cached by the
// digest of what the reference names, and by platform; a reference by tag
// still costs one manifest request (HEAD) to learn the digest, since tags
// move.
type Resolver struct {
	client   kubernetes.Interface
	platform v1.Platform
	cache    *lru.Cache
	timeout  time.Duration
	// policy, and the transports whose dialers apply it (see guard.go);
	// each resolution puts a guard of its own above them.
	policy         *policy
	direct, public http.RoundTripper
	// running bounds the resolutions under way at once: each may hold a
	// manifest and a config in memory while they are parsed. perNamespace
	// bounds those of one namespace, so that one namespace's slow
	// registry cannot take every turn from the others'.
	running      chan struct{}
	mu           sync.Mutex
	perNamespace map[string]int
}

// Bounds on what one image may say it runs, and on resolutions at once.
// Real ENTRYPOINT and CMD are a handful of short strings; a config that
// says more would sit in the cache, one per digest a registry invents.
const (
	maxArgs        = 1024
	maxArgBytes    = 64 << 10
	maxResolutions = 8
	// maxPerNamespace is a namespace's share of maxResolutions.
	maxPerNamespace = 2
)

// DefaultTimeout bounds one resolution, well inside the webhook's
// timeoutSeconds (5 in deploy/ and the chart), so that a slow registry
// gets the pod denied with a reason rather than the API server's timeout.
const DefaultTimeout = 3 * time.Second

// Option configures a Resolver.
type Option func(*Resolver)

// WithTimeout bounds each resolution, all its requests together, to d.
func WithTimeout(d time.Duration) Option {
	return func(r *Resolver) { r.timeout = d }
}

// WithInsecureRegistries lets the resolver speak plain HTTP to the
// registries listed, as host (any port) or host:port, and to them only;
// and reach them on a loopback address. Entries that ParseHost refuses
// are left out: check them first.
func WithInsecureRegistries(hosts []string) Option {
	return func(r *Resolver) { r.policy.insecure = append(r.policy.insecure, parseHosts(hosts)...) }
}

// WithAuthHosts lets a registry's token realm be on the hosts listed, as
// host (any port) or host:port, besides the registry's own host (and
// auth.docker.io for Docker Hub).
func WithAuthHosts(hosts []string) Option {
	return func(r *Resolver) { r.policy.authHosts = append(r.policy.authHosts, parseHosts(hosts)...) }
}

// WithAPIServer names the API server as the webhook reaches it (a URL
// or host:port, such as its rest.Config's Host), never to be contacted
// for a registry; the kubernetes Service's names and ClusterIP
// (KUBERNETES_SERVICE_HOST) are refused anyway.
func WithAPIServer(hostOrURL string) Option {
	return func(r *Resolver) {
		if hostOrURL != "" {
			r.policy.addAPIServer(hostOrURL)
		}
	}
}

// NewResolver returns a resolver that reads pull secrets with
// client (none when nil: registries are then read anonymously), picks platform for images that have several unless the pod's
// nodeSelector names an OS or architecture, and caches up to cacheSize
// configs. Every response body is capped (see MaxContentBytes), each
// resolution ends after DefaultTimeout unless WithTimeout says otherwise,
// and the registry, its token service and its redirects are held to the
// rules in guard.go.
func NewResolver(client kubernetes.Interface, platform v1.Platform, cacheSize int, options ...Option) *Resolver {
	r := &Resolver{client: client, platform: platform, cache: lru.New(cacheSize), timeout: DefaultTimeout, running: make(chan struct{}, maxResolutions), perNamespace: map[string]int{}, policy: newPolicy()}
	for _, o := range options {
		if o != nil {
			o(r)
		}
	}
	transport := func(publicOnly bool) http.RoundTripper {
		t := remote.DefaultTransport.(*http.Transport).Clone()
		t.MaxResponseHeaderBytes = maxHeaderBytes
		t.Proxy = nil // the dialer must see the registry's address, not a proxy's
		t.DialContext = r.policy.dial(publicOnly)
		return &limitTransport{inner: t}
	}
	r.direct, r.public = transport(false), transport(true)
	return r
}

// Resolve returns what container c of pod runs when it sets no command:
// its image's ENTRYPOINT and CMD. An error says why the image could not be
// read, in words of its own: it never carries what the registry sent.
func (r *Resolver) Resolve(ctx context.Context, pod *corev1.Pod, c *corev1.Container) (*wrap.ImageCommand, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if !r.enter(pod.Namespace) {
		return nil, &Error{Reason: fmt.Sprintf("the webhook is already reading %d images for namespace %s, its most at once", maxPerNamespace, pod.Namespace)}
	}
	defer r.leave(pod.Namespace)
	select {
	case r.running <- struct{}{}:
		defer func() { <-r.running }()
	case <-ctx.Done():
		return nil, &Error{Reason: fmt.Sprintf("the webhook was reading %d other images, its most at once, for %s", maxResolutions, r.timeout), Err: ctx.Err()}
	}
	cmd, err := r.resolve(ctx, pod, c)
	if err != nil {
		return nil, r.explain(ctx, err)
	}
	return cmd, nil
}

// enter takes one of namespace's turns, if it has one left; leave gives it
// back. A namespace without a turn is refused at once: its own images
// are what keeps the others waiting.
func (r *Resolver) enter(namespace string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.perNamespace[namespace] >= maxPerNamespace {
		return false
	}
	r.perNamespace[namespace]++
	return true
}

func (r *Resolver) leave(namespace string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.perNamespace[namespace]--; r.perNamespace[namespace] <= 0 {
		delete(r.perNamespace, namespace)
	}
}

func (r *Resolver) resolve(ctx context.Context, pod *corev1.Pod, c *corev1.Container) (*wrap.ImageCommand, error) {
	ref, err := name.ParseReference(c.Image)
	if err != nil {
		return nil, &Error{Reason: fmt.Sprintf("cannot parse the image reference: %v", err), Err: err}
	}
	registry := ref.Context().RegistryStr()
	host, port := splitRegistry(registry)
	// go-containerregistry tries plain HTTP after HTTPS for registries
	// it takes for local (private and loopback addresses): the guard
	// refuses that unless the registry is listed, and for a listed one
	// name.Insecure makes it try plain HTTP whatever its address.
	if listed(r.policy.insecure, host, port) {
		if ref, err = name.ParseReference(c.Image, name.Insecure); err != nil {
			return nil, &Error{Reason: fmt.Sprintf("cannot parse the image reference: %v", err), Err: err}
		}
	}
	platform := r.platformFor(pod)
	digest, byDigest := ref.(name.Digest)
	if byDigest {
		if cached, ok := r.cache.Get(cacheKey(digest, platform)); ok {
			return cached.(*wrap.ImageCommand), nil // no request at all
		}
	}
	keychain, err := r.keychain(ctx, pod)
	if err != nil {
		return nil, err
	}
	g := &guard{policy: r.policy, registry: registry, host: host, direct: r.direct, public: r.public}
	opts := []remote.Option{
		remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain), remote.WithTransport(g),
		// Retrying a status costs another body and more of the deadline,
		// and the API server's client retries the pod anyway. Failures
		// without a status are not retried either (see noRetry): Go's
		// transport already retries a request whose kept-alive
		// connection was closed under it.
		remote.WithRetryStatusCodes(),
	}
	if !byDigest {
		desc, err := remote.Head(ref, opts...)
		if err != nil {
			return nil, err
		}
		digest = ref.Context().Digest(desc.Digest.String())
		if cached, ok := r.cache.Get(cacheKey(digest, platform)); ok {
			return cached.(*wrap.ImageCommand), nil
		}
	}
	img, err := remote.Image(digest, append(opts, remote.WithPlatform(platform))...)
	if err != nil {
		if strings.HasPrefix(err.Error(), "no child with platform") { // go-containerregistry's words, index.go
			return nil, &Error{Reason: fmt.Sprintf("the image has no build for platform %s (the pod's nodeSelector, else --default-platform)", platform), Err: err}
		}
		return nil, err
	}
	cmd, err := command(img)
	if err != nil {
		return nil, err
	}
	r.cache.Add(cacheKey(digest, platform), cmd)
	return cmd, nil
}

// command decodes ENTRYPOINT and CMD alone from img's config: decoding the
// whole config would build every entry of a history or a rootfs that a
// registry can make millions long, where skipping them costs nothing.
func command(img v1.Image) (*wrap.ImageCommand, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Config struct {
			Entrypoint []string `json:"Entrypoint"`
			Cmd        []string `json:"Cmd"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	cmd := &wrap.ImageCommand{Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd}
	n, size := len(cmd.Entrypoint)+len(cmd.Cmd), 0
	for _, a := range append(slices.Clone(cmd.Entrypoint), cmd.Cmd...) {
		size += len(a)
	}
	if n > maxArgs || size > maxArgBytes {
		return nil, &Error{Reason: fmt.Sprintf("the image's ENTRYPOINT and CMD hold %d arguments of %d bytes, over the %d arguments or %d KiB klock takes from an image", n, size, maxArgs, maxArgBytes>>10)}
	}
	return cmd, nil
}

func cacheKey(d name.Digest, p v1.Platform) string { return d.String() + " " + p.String() }

// Error is why an image could not be read. Its message is the resolver's
// own words: a registry's answers (error bodies, manifests, redirects) can
// hold anything the registry or a host behind it returns, and the message
// goes into the pod's denial. Unwrap gives the cause, for programs.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Reason }
func (e *Error) Unwrap() error { return e.Err }

// explain words err, from resolve, without what the registry sent.
func (r *Resolver) explain(ctx context.Context, err error) error {
	var (
		own      *Error
		refused  *RefusedError
		tooLarge *TooLargeError
		terr     *transport.Error
		uerr     *url.Error
		syntax   *json.SyntaxError
		typ      *json.UnmarshalTypeError
	)
	reason := ""
	switch {
	case errors.As(err, &own):
		return err // ours already: parse and pull secret errors
	case errors.As(err, &refused):
		// Fixed words, naming only the registry the pod asked for.
		r := *refused
		if r.Kind == KindPlainHTTP && errors.As(err, &uerr) && !errors.As(uerr.Err, new(*RefusedError)) {
			// Plain HTTP was the fallback after HTTPS, which failed.
			r.HTTPS = networkFailure(uerr.Err)
		}
		return &Error{Reason: r.Error(), Err: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		reason = fmt.Sprintf("the registry did not answer within %s", r.timeout)
	case ctx.Err() != nil:
		reason = "the admission request ended before the registry answered"
	case errors.As(err, &tooLarge):
		reason = tooLarge.Error()
	case errors.As(err, &terr):
		reason = fmt.Sprintf("the registry answered HTTP %d %s", terr.StatusCode, http.StatusText(terr.StatusCode))
		if codes := knownCodes(terr); codes != "" {
			reason += " (" + codes + ")"
		}
		if terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden {
			reason += " (the pod's imagePullSecrets and its service account's hold no credentials this registry accepts)"
		}
	case errors.As(err, &uerr):
		// Neither the URL (a redirect may name it) nor the cause's text
		// (a Location header, a certificate's names, a host from a
		// redirect) is the client's own words: say only what kind of
		// failure it was.
		reason = "cannot reach the registry: " + networkFailure(uerr.Err)
	case errors.As(err, &syntax), errors.As(err, &typ):
		reason = "the registry sent a manifest, config or token that is not valid JSON for it"
	default:
		// Such as an unexpected media type, which the registry wrote.
		reason = "the registry's answer is not an image manifest or config that klock can read"
	}
	return &Error{Reason: reason, Err: err}
}

// knownCodes lists the registry's error codes that the distribution spec
// defines; any other text from the body is left out.
func knownCodes(terr *transport.Error) string {
	known := map[transport.ErrorCode]bool{
		transport.BlobUnknownErrorCode: true, transport.ManifestUnknownErrorCode: true,
		transport.ManifestInvalidErrorCode: true, transport.NameInvalidErrorCode: true,
		transport.NameUnknownErrorCode: true, transport.UnauthorizedErrorCode: true,
		transport.DeniedErrorCode: true, transport.UnsupportedErrorCode: true,
		transport.TooManyRequestsErrorCode: true,
	}
	codes := ""
	for _, d := range terr.Errors {
		if known[d.Code] && !strings.Contains(codes, string(d.Code)) {
			if codes != "" {
				codes += ", "
			}
			codes += string(d.Code)
		}
	}
	return codes
}

func (r *Resolver) keychain(ctx context.Context, pod *corev1.Pod) (authn.Keychain, error) {
	if r.client == nil {
		return authn.NewMultiKeychain(), nil // anonymous: no pull secrets are read
	}
	var secrets []string
	for _, s := range pod.Spec.ImagePullSecrets {
		secrets = append(secrets, s.Name)
	}
	kc, err := kauth.New(ctx, r.client, kauth.Options{
		Namespace:          pod.Namespace,
		ServiceAccountName: pod.Spec.ServiceAccountName,
		ImagePullSecrets:   secrets,
	})
	if err != nil {
		return nil, &Error{Reason: fmt.Sprintf("cannot read the pod's pull secrets: %v", err), Err: err}
	}
	return kc, nil
}

// platformFor is the platform the pod will run on, as far as admission can
// tell: its nodeSelector, else the resolver's default.
func (r *Resolver) platformFor(pod *corev1.Pod) v1.Platform {
	p := r.platform
	if os, ok := pod.Spec.NodeSelector[corev1.LabelOSStable]; ok {
		p.OS = os
	}
	if arch, ok := pod.Spec.NodeSelector[corev1.LabelArchStable]; ok {
		p.Architecture = arch
		p.Variant = ""
	}
	return p
}

// networkFailure names the kind of a failure to talk to a registry, in
// fixed words.
func networkFailure(err error) string {
	err = cause(err)
	var (
		dns      *net.DNSError
		netErr   net.Error
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		tlsRec   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &dns):
		return "its host name does not resolve"
	case errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return "its TLS certificate is not valid for it or not trusted"
	case errors.As(err, &tlsRec):
		return "it does not speak TLS"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "the connection was refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection was closed before it answered"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "it did not answer in time"
	}
	return "the request failed (a redirect it sent, or the network)"
}
