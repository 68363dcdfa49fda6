package images

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Where the resolver may go. The image reference, and so the registry, is
// the pod author's choice, and a registry may send the webhook elsewhere
// with a token realm or a redirect: without these rules any pod author
// could make the webhook request URLs of their choice from inside the
// cluster (a server-side request forgery). The rules:
//
//   - Every request goes to the registry's own host, or is a token request
//     to the realm the registry named, or a redirect of one of these.
//     "Host" is the host name, any port: the pod author can name any port
//     of any host as the registry anyway, so pinning the port would add
//     nothing but breakage (token services on another port of the
//     registry's host are common).
//   - A token realm must be on the registry's host, on auth.docker.io for
//     Docker Hub (index.docker.io and registry-1.docker.io), or on a host
//     listed in --registry-auth-host (such as gitlab.com, whose registry
//     is registry.gitlab.com).
//   - A redirect may stay on the registry's host, or on the realm's host
//     for a token. A manifest or blob may also be redirected to another
//     host, which is how Docker Hub, GHCR, ECR, GCR and Quay serve blobs
//     from their storage, but only over HTTPS and only to a public address
//     (see publicOnly): the pod author could name any public host as the
//     registry already, so this opens nothing new.
//   - Plain HTTP only to the registries listed in --insecure-registry,
//     never after HTTPS (no downgrade by redirect). go-containerregistry
//     would also speak plain HTTP to any private or loopback address.
//   - The address actually dialled, after DNS, is checked (see
//     policy.refuse): never link-local (cloud metadata), unspecified,
//     multicast or broadcast, never the Kubernetes API server, loopback
//     only for a listed insecure registry. Checking the dialled address,
//     not the name, is what DNS rebinding cannot get around. Private
//     addresses (RFC 1918, ULA) are allowed: in-cluster registries live
//     there.
//   - No HTTP proxy: behind one, the address dialled would be the
//     proxy's and none of the above could be checked.

// Kind is what a refused request would have reached.
type Kind string

// What the resolver refuses.
const (
	KindLoopback     Kind = "a loopback address"
	KindLinkLocal    Kind = "a link-local or cloud metadata address"
	KindAPIServer    Kind = "the Kubernetes API server"
	KindNotUnicast   Kind = "an unspecified, multicast or broadcast address"
	KindPrivate      Kind = "a private address on another host"
	KindOtherHost    Kind = "another host"
	KindRealmHost    Kind = "a token service on another host"
	KindDowngrade    Kind = "plain HTTP after HTTPS"
	KindPlainHTTP    Kind = "plain HTTP"
	KindBadScheme    Kind = "a URL that is neither HTTP nor HTTPS"
	KindUnresolvable Kind = "a host name that resolves to no address"
)

// Via is which request of the resolution was refused.
type Via string

// The requests of a resolution.
const (
	ViaRegistry Via = "registry"
	ViaRealm    Via = "token"
	ViaRedirect Via = "redirect"
)

// RefusedError says that the resolver refused to send a request. Its
// message names the registry the pod asked for (validated by the name
// parser) and what was refused, in fixed words: never the host or URL a
// registry sent the webhook to.
type RefusedError struct {
	Registry string
	Kind     Kind
	Via      Via
	// HTTPS is why HTTPS failed, for KindPlainHTTP refused as the fallback
	// after it: go-containerregistry tries both for a private registry.
	HTTPS string
}

func (e *RefusedError) Error() string {
	r := e.Registry
	switch e.Kind {
	case KindPlainHTTP:
		msg := fmt.Sprintf("registry %s would be read over plain HTTP, which klock does only for the registries listed in --insecure-registry: ask the cluster admin to list it", r)
		if e.HTTPS != "" {
			msg = fmt.Sprintf("registry %s cannot be read over HTTPS (%s), and klock uses plain HTTP only for the registries listed in --insecure-registry: ask the cluster admin to list it", r, e.HTTPS)
		}
		return msg
	case KindDowngrade:
		return fmt.Sprintf("registry %s redirected klock from HTTPS to plain HTTP, which klock refuses", r)
	case KindRealmHost:
		return fmt.Sprintf("registry %s sends klock for a token to another host; klock takes tokens only from the registry's own host, auth.docker.io for Docker Hub, and the hosts listed in --registry-auth-host: ask the cluster admin to list the token host", r)
	case KindOtherHost:
		return fmt.Sprintf("registry %s sent klock to another host; klock follows a registry elsewhere only for its token service and for manifests and blobs moved to a public HTTPS host", r)
	case KindBadScheme:
		return fmt.Sprintf("registry %s sent klock to a URL that is neither HTTP nor HTTPS", r)
	case KindUnresolvable:
		return fmt.Sprintf("registry %s: a host name it led to resolves to no address", r)
	}
	where := fmt.Sprintf("registry %s is at %s", r, e.Kind)
	switch e.Via {
	case ViaRealm:
		where = fmt.Sprintf("registry %s sends klock for a token to %s", r, e.Kind)
	case ViaRedirect:
		where = fmt.Sprintf("registry %s redirected klock to %s", r, e.Kind)
	}
	switch e.Kind {
	case KindLoopback:
		return where + ", which klock contacts only for the registries listed in --insecure-registry: ask the cluster admin to list it"
	case KindPrivate:
		return where + "; klock follows a registry to other hosts only over HTTPS to public addresses"
	}
	return where + ", which klock never contacts"
}

// hostPort is an entry of --insecure-registry or --registry-auth-host:
// a host, with any port if port is empty.
type hostPort struct{ host, port string }

// ParseHost checks an entry of --insecure-registry or
// --registry-auth-host: host or host:port, as in an image reference.
func ParseHost(s string) (host, port string, err error) {
	u, perr := url.Parse("//" + s)
	if s == "" || perr != nil || u.Host != s || u.User != nil || u.Hostname() == "" {
		return "", "", fmt.Errorf("%q is not a host or host:port", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", "", fmt.Errorf("%q: the port must be from 1 to 65535", s)
		}
	} else if strings.HasSuffix(s, ":") {
		return "", "", fmt.Errorf("%q: the port is empty", s)
	}
	if strings.Contains(u.Hostname(), ":") && !strings.HasPrefix(s, "[") {
		return "", "", fmt.Errorf("%q: write an IPv6 address in brackets, such as [fd00::1]:5000", s)
	}
	return normal(u.Hostname()), u.Port(), nil
}

// normal is how host names compare: case-insensitive, without the
// trailing dot of a fully qualified name.
func normal(host string) string { return strings.TrimSuffix(strings.ToLower(host), ".") }

// splitRegistry splits a registry as an image reference names it, host
// or host:port, an IPv6 address in brackets.
func splitRegistry(registry string) (host, port string) {
	if h, p, err := net.SplitHostPort(registry); err == nil {
		return normal(h), p
	}
	return normal(strings.TrimSuffix(strings.TrimPrefix(registry, "["), "]")), ""
}

func parseHosts(list []string) []hostPort {
	var out []hostPort
	for _, s := range list {
		if h, p, err := ParseHost(s); err == nil {
			out = append(out, hostPort{h, p})
		}
	}
	return out
}

func listed(list []hostPort, host, port string) bool {
	host = normal(host)
	for _, e := range list {
		if e.host == host && (e.port == "" || e.port == port) {
			return true
		}
	}
	return false
}

// dockerHub are Docker Hub's registry names, whose tokens come from
// auth.docker.io.
var dockerHub = map[string]bool{"index.docker.io": true, "registry-1.docker.io": true, "docker.io": true}

// Addresses that are not link-local but serve cloud metadata all the same.
var metadata = []netip.Prefix{
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS, IPv6 (a ULA, private otherwise)
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud
	netip.MustParsePrefix("168.63.129.16/32"),   // Azure's wire server
}

// Addresses that reach no single host, or the webhook's own.
var notUnicast = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network": Linux reaches the host itself
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
}

var (
	nat64 = netip.MustParsePrefix("64:ff9b::/96")  // IPv4 embedded in its last 32 bits
	cgnat = netip.MustParsePrefix("100.64.0.0/10") // shared address space, private in practice
	// Other IPv6 forms that carry an IPv4 address a gateway or the host
	// may reach: refused outright, since no registry needs them.
	embedsIPv4 = []netip.Prefix{
		netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
		netip.MustParsePrefix("2002::/16"),      // 6to4
		netip.MustParsePrefix("::/96"),          // IPv4-compatible (deprecated)
	}
)

// policy is the part of the rules that the dialers apply.
type policy struct {
	insecure  []hostPort
	authHosts []hostPort
	// apiIPs are the API server's addresses on every port (the
	// kubernetes Service's ClusterIP); apiAddrs on one port (the
	// address the webhook itself uses, which may be shared with other
	// services, as 127.0.0.1 is in tests).
	apiIPs   []netip.Addr
	apiAddrs []netip.AddrPort
	apiNames []hostPort
	// lookup resolves a host name; tests replace it, as /etc/hosts would.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

func newPolicy() *policy {
	p := &policy{lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}}
	// In a pod, KUBERNETES_SERVICE_HOST is the kubernetes Service's
	// ClusterIP, which serves nothing but the API server.
	if ip, err := netip.ParseAddr(os.Getenv("KUBERNETES_SERVICE_HOST")); err == nil {
		p.apiIPs = append(p.apiIPs, ip.Unmap())
	}
	return p
}

// addAPIServer adds the API server's URL or host:port, as the webhook's
// client config names it.
func (p *policy) addAPIServer(s string) {
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		s = u.Host
		if u.Port() == "" {
			s = net.JoinHostPort(u.Hostname(), "443")
		}
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, "443"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err == nil {
			p.apiAddrs = append(p.apiAddrs, netip.AddrPortFrom(ip.Unmap(), uint16(n)))
		}
		return
	}
	p.apiNames = append(p.apiNames, hostPort{normal(host), port})
}

// clusterName tells the names of the API server's Service, and the
// name the webhook's config uses for it, from others.
func (p *policy) clusterName(host, port string) bool {
	h := normal(host)
	switch {
	case h == "kubernetes", h == "kubernetes.default", h == "kubernetes.default.svc",
		strings.HasPrefix(h, "kubernetes.default.svc."):
		return true
	}
	return listed(p.apiNames, h, port)
}

// refuse says what ip, dialled for host:port, must not be, or "". With
// publicOnly, private addresses are refused too.
func (p *policy) refuse(host, port string, ip netip.Addr, publicOnly bool) Kind {
	ip = ip.Unmap()
	if nat64.Contains(ip) {
		// The IPv4 address a NAT64 gateway would reach.
		b := ip.As16()
		if k := p.refuse(host, port, netip.AddrFrom4([4]byte(b[12:])), publicOnly); k != "" {
			return k
		}
	}
	n, _ := strconv.ParseUint(port, 10, 16)
	switch {
	case ip.IsUnspecified(), ip.IsMulticast(), slicesContainsPrefix(notUnicast, ip):
		return KindNotUnicast
	case ip.IsLinkLocalUnicast(), slicesContainsPrefix(metadata, ip):
		return KindLinkLocal
	case slicesContainsAddr(p.apiIPs, ip), slicesContainsAddrPort(p.apiAddrs, netip.AddrPortFrom(ip, uint16(n))):
		return KindAPIServer
	case ip.IsLoopback():
		if listed(p.insecure, host, port) {
			return ""
		}
		return KindLoopback
	case ip.Is6() && slicesContainsPrefix(embedsIPv4, ip):
		return KindNotUnicast
	case !ip.IsGlobalUnicast():
		return KindNotUnicast
	case publicOnly && (ip.IsPrivate() || cgnat.Contains(ip)):
		return KindPrivate
	}
	return ""
}

func slicesContainsPrefix(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func slicesContainsAddr(as []netip.Addr, ip netip.Addr) bool {
	for _, a := range as {
		if a == ip {
			return true
		}
	}
	return false
}

func slicesContainsAddrPort(as []netip.AddrPort, ap netip.AddrPort) bool {
	for _, a := range as {
		if a == ap {
			return true
		}
	}
	return false
}

// dial resolves addr itself and dials only an address the policy allows:
// the check is on what is dialled, so a name that resolves to one address
// when checked and another when dialled (DNS rebinding) gets nowhere. A
// name with any refused address is refused whole: no real registry
// resolves to a metadata or loopback address besides its real ones.
func (p *policy) dial(publicOnly bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if p.clusterName(host, port) {
			return nil, &RefusedError{Kind: KindAPIServer}
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = p.lookup(ctx, host); err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, &RefusedError{Kind: KindUnresolvable}
		}
		for _, ip := range ips {
			if k := p.refuse(host, port, ip, publicOnly); k != "" {
				return nil, &RefusedError{Kind: k}
			}
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil, err
		}
		var last error
		for _, ip := range ips {
			conn, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.WithZone(""), uint16(n)).String())
			if err == nil {
				return conn, nil
			}
			last = err
		}
		return nil, last
	}
}

// role is what a request asks for, which sets the cap on its answer.
type role int

const (
	roleOther   role = iota // the /v2/ ping
	roleContent             // a manifest, an index or a blob
	roleToken               // a token, from the realm
)

type roleKey struct{}

func roleOf(req *http.Request) role {
	r, _ := req.Context().Value(roleKey{}).(role)
	return r
}

// guard applies the rules to every request of one resolution, redirects
// and token requests included: it sits below go-containerregistry's
// transports, so each request passes through it (an http.Client calls its
// transport once per redirect).
type guard struct {
	policy   *policy
	registry string // as the reference names it: host[:port]
	host     string // its host name, normal
	// direct dials the registry and its token service; public dials
	// the other hosts a manifest or blob is redirected to. Two
	// transports, two connection pools: a connection dialled to a
	// private registry cannot be reused for a redirect that must reach
	// a public address only.
	direct, public http.RoundTripper

	mu     sync.Mutex
	realms []*url.URL // every realm a challenge named
}

// noRetry hides a failure from go-containerregistry's retries, which
// retry connection errors with sleeps that ignore the context (past the
// resolution's deadline). It has no Unwrap, so that errors.Is finds no
// io.EOF or ECONNRESET to retry on, and no Temporary method; As still
// finds the failure, for explain, and Is the context's end.
type noRetry struct{ err error }

func (e *noRetry) Error() string      { return e.err.Error() }
func (e *noRetry) As(target any) bool { return errors.As(e.err, target) }

// Is answers for the context's errors only, which are never retried.
func (e *noRetry) Is(target error) bool {
	return (target == context.DeadlineExceeded || target == context.Canceled) && errors.Is(e.err, target)
}

// cause is the failure under err's noRetry, if any.
func cause(err error) error {
	var nr *noRetry
	if errors.As(err, &nr) {
		return nr.err
	}
	return err
}

func (g *guard) refused(k Kind, v Via) error {
	return &noRetry{&RefusedError{Registry: g.registry, Kind: k, Via: v}}
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	inner, rl, via, err := g.route(req)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := inner.RoundTrip(req.WithContext(context.WithValue(req.Context(), roleKey{}, rl)))
	if err != nil {
		var r *RefusedError
		if errors.As(err, &r) {
			// From the dialer, which knows neither the registry nor
			// which request it dials for.
			return nil, g.refused(r.Kind, via)
		}
		return nil, &noRetry{err}
	}
	g.noteRealms(resp)
	return resp, nil
}

// route says which transport takes req, the role of its answer, and
// which request of the resolution it is; or why it is refused.
func (g *guard) route(req *http.Request) (http.RoundTripper, role, Via, error) {
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	u := req.URL
	scheme, host, port := u.Scheme, normal(u.Hostname()), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	rl := roleOther
	switch {
	case g.isRealm(first.URL):
		rl = roleToken
	case normal(first.URL.Hostname()) == g.host && content(first.URL.Path):
		rl = roleContent
	}
	via, through := ViaRegistry, g.direct
	switch {
	case scheme != "https" && scheme != "http":
		return nil, rl, via, g.refused(KindBadScheme, via)
	case req.Response != nil:
		via = ViaRedirect
		if prev := req.Response.Request; prev != nil && prev.URL.Scheme == "https" && scheme != "https" {
			return nil, rl, via, g.refused(KindDowngrade, via)
		}
		switch {
		case host == g.host, host == normal(first.URL.Hostname()):
			// On the registry's host, or on the token service's.
		case rl == roleContent && scheme == "https":
			through = g.public
		default:
			return nil, rl, via, g.refused(KindOtherHost, via)
		}
	case rl == roleToken:
		via = ViaRealm
		if host != g.host && !listed(g.policy.authHosts, host, port) && !(dockerHub[g.host] && host == "auth.docker.io") {
			return nil, rl, via, g.refused(KindRealmHost, via)
		}
	case host != g.host:
		return nil, rl, via, g.refused(KindOtherHost, via)
	}
	if scheme == "http" && !listed(g.policy.insecure, host, port) {
		return nil, rl, via, g.refused(KindPlainHTTP, via)
	}
	return through, rl, via, nil
}

// content tells the registry API paths of manifests, indexes and blobs.
func content(path string) bool {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return false
	}
	for _, kind := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(rest, kind); i > 0 && !strings.Contains(rest[i+len(kind):], "/") && len(rest) > i+len(kind) {
			return true
		}
	}
	return false
}

// isRealm tells a token request: one for a realm that a challenge named
// (go-containerregistry adds only the query).
func (g *guard) isRealm(u *url.URL) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.realms {
		if strings.EqualFold(r.Scheme, u.Scheme) && strings.EqualFold(r.Host, u.Host) && r.EscapedPath() == u.EscapedPath() {
			return true
		}
	}
	return false
}

// noteRealms keeps every realm that resp's challenges name. It reads more
// loosely than go-containerregistry's parser (any scheme, any position):
// what it keeps is a superset of the realm that parser picks, and a
// request to a realm that was not kept would be refused, not let through.
func (g *guard) noteRealms(resp *http.Response) {
	for _, h := range resp.Header.Values("WWW-Authenticate") {
		for _, v := range realmValues(h) {
			if u, err := url.Parse(v); err == nil {
				g.mu.Lock()
				if len(g.realms) < 16 {
					g.realms = append(g.realms, u)
				}
				g.mu.Unlock()
			}
		}
	}
}

// realmValues returns the value of every realm parameter in a
// WWW-Authenticate header, quoted (with backslash escapes) or not.
func realmValues(h string) []string {
	var out []string
	lower := strings.ToLower(h)
	for i := 0; ; {
		j := strings.Index(lower[i:], "realm")
		if j < 0 {
			return out
		}
		i += j + len("realm")
		rest := strings.TrimLeft(h[i:], " \t")
		if !strings.HasPrefix(rest, "=") {
			continue
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			for k := 1; k < len(rest); k++ {
				if rest[k] == '\\' && k+1 < len(rest) {
					k++
				} else if rest[k] == '"' {
					break
				}
				b.WriteByte(rest[k])
			}
			out = append(out, b.String())
		} else {
			end := strings.IndexAny(rest, ", \t")
			if end < 0 {
				end = len(rest)
			}
			out = append(out, rest[:end])
		}
	}
}
