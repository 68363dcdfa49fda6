package framework

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// FaultProxy is an HTTP proxy between clients and the API server that a
// test turns faults on and off in: it cuts every connection, delays
// requests, or lets a write reach the API server and commit there and then
// loses its answer, which no TCP-level fault can do precisely.
//
// It terminates TLS with a certificate of its own, which the kubeconfig it
// writes trusts, and forwards upstream with the credentials of the
// rest.Config it was given; it speaks HTTP/2 on both sides, as client-go
// does, and streams watches through. It counts requests by API verb.
type FaultProxy struct {
	// Kubeconfig is a file that points clients at the proxy; it holds no
	// credentials, since the proxy authenticates upstream.
	Kubeconfig string

	srv       *httptest.Server
	upstream  *url.URL
	transport http.RoundTripper
	forward   *httputil.ReverseProxy
	info      *request.RequestInfoFactory

	mu     sync.Mutex
	cut    bool
	delay  time.Duration
	drops  []*Drop
	counts map[string]int
	writes []Call
}

// Call is one request through the proxy, as fault rules and tests see it.
type Call struct {
	// Verb is the API verb: get, list, watch, create, update, delete...
	Verb                      string
	Namespace, Resource, Name string
	// Lease is the body of a create or update of a Lease, decoded.
	Lease *coordinationv1.Lease
	// Sent is when the proxy sent the request upstream, Answered when the
	// answer came back; a write committed between the two.
	Sent, Answered time.Time
	Status         int
	// Dropped is set when the proxy threw the answer away.
	Dropped bool
}

// Drop is an armed fault that loses the answer to one request; see
// FaultProxy.DropResponse.
type Drop struct {
	match func(*Call) bool
	fired chan struct{}
	call  Call
}

// Fired is closed once the answer has been thrown away.
func (d *Drop) Fired() <-chan struct{} { return d.fired }

// Call is the request whose answer was lost; valid once Fired is closed.
func (d *Drop) Call() Call {
	<-d.fired
	return d.call
}

// NewFaultProxy starts a proxy to the API server of upstream, which it uses
// for credentials, and writes a kubeconfig for it to kubeconfig.
func NewFaultProxy(upstream *rest.Config, kubeconfig string) (*FaultProxy, error) {
	target, err := url.Parse(upstream.Host)
	if err != nil {
		return nil, err
	}
	transport, err := rest.TransportFor(upstream)
	if err != nil {
		return nil, err
	}
	quiet := log.New(io.Discard, "", 0) // refused connections and aborted streams are the point
	p := &FaultProxy{
		Kubeconfig: kubeconfig,
		upstream:   target,
		transport:  transport,
		info: &request.RequestInfoFactory{
			APIPrefixes:          sets.NewString("api", "apis"),
			GrouplessAPIPrefixes: sets.NewString("api"),
		},
		counts: map[string]int{},
	}
	p.forward = &httputil.ReverseProxy{
		Rewrite:        func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:      transport,
		FlushInterval:  -1, // watch events go out as they come
		ModifyResponse: p.answered,
		ErrorLog:       quiet,
	}
	p.srv = httptest.NewUnstartedServer(p)
	p.srv.Listener = &refusingListener{Listener: p.srv.Listener, p: p}
	p.srv.EnableHTTP2 = true
	p.srv.Config.ErrorLog = quiet
	p.srv.StartTLS()

	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	kc := clientcmdapi.NewConfig()
	kc.Clusters["proxy"] = &clientcmdapi.Cluster{Server: p.srv.URL, CertificateAuthorityData: ca}
	kc.AuthInfos["proxy"] = &clientcmdapi.AuthInfo{}
	kc.Contexts["proxy"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "proxy"}
	kc.CurrentContext = "proxy"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Config is a rest.Config for in-process clients through the proxy.
func (p *FaultProxy) Config() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", p.Kubeconfig)
}

// Cut closes every client connection and refuses new ones until Restore,
// as a network partition between the clients and the API server would.
func (p *FaultProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
	p.srv.CloseClientConnections()
}

// Restore accepts connections again after Cut.
func (p *FaultProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// SetDelay holds every request that long before forwarding it; 0 stops.
func (p *FaultProxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// DropResponse arms a fault for the next request that match accepts and
// that the API server answers with success: the request is forwarded, the
// answer read and thrown away, and the client's stream reset (its
// connection closed under HTTP/1), as if the network failed just after the
// server committed the write. A matching request the server refuses is
// passed through and the fault stays armed. The whole answer is read
// first, so match no watch.
func (p *FaultProxy) DropResponse(match func(*Call) bool) *Drop {
	d := &Drop{match: match, fired: make(chan struct{})}
	p.mu.Lock()
	p.drops = append(p.drops, d)
	p.mu.Unlock()
	return d
}

// Counts returns how many requests came through, by API verb.
func (p *FaultProxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// Writes returns the creates, updates and deletes the API server accepted,
// in the order they were answered, including those whose answer was lost.
func (p *FaultProxy) Writes() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.writes...)
}

// Close stops the proxy and ends every connection, watches included.
func (p *FaultProxy) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
}

type callKey struct{}

func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	call, body, err := p.describe(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	if p.cut {
		// A request on a connection accepted just before Cut.
		p.mu.Unlock()
		panic(http.ErrAbortHandler)
	}
	p.counts[call.Verb]++
	delay := p.delay
	var drop *Drop
	for i, d := range p.drops {
		if d.match(call) {
			drop = d
			p.drops = append(p.drops[:i:i], p.drops[i+1:]...)
			break
		}
	}
	p.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	call.Sent = time.Now()
	if drop != nil {
		p.dropResponse(w, r, call, body, drop)
		return
	}
	p.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, call)))
}

// describe parses r into a Call, reading the body of a Lease write.
func (p *FaultProxy) describe(r *http.Request) (*Call, []byte, error) {
	ri, err := p.info.NewRequestInfo(r)
	if err != nil {
		return nil, nil, err
	}
	call := &Call{Verb: ri.Verb, Namespace: ri.Namespace, Resource: ri.Resource, Name: ri.Name}
	if ri.Resource != "leases" || (ri.Verb != "create" && ri.Verb != "update") {
		return call, nil, nil
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// Protobuf or JSON, whichever the client sent.
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("decoding the Lease sent: %w", err)
	}
	if lease, ok := obj.(*coordinationv1.Lease); ok {
		call.Lease = lease
		if call.Name == "" {
			call.Name = lease.Name // a create names the Lease in its body
		}
	}
	return call, body, nil
}

// answered records a write the API server accepted.
func (p *FaultProxy) answered(resp *http.Response) error {
	call, ok := resp.Request.Context().Value(callKey{}).(*Call)
	if !ok {
		return nil
	}
	call.Answered, call.Status = time.Now(), resp.StatusCode
	p.recordWrite(call)
	return nil
}

func (p *FaultProxy) recordWrite(call *Call) {
	switch call.Verb {
	case "create", "update", "delete", "patch":
	default:
		return
	}
	if call.Status/100 != 2 {
		return
	}
	p.mu.Lock()
	p.writes = append(p.writes, *call)
	p.mu.Unlock()
}

// dropResponse forwards r, and if the API server accepts it, throws the
// answer away and aborts the client's stream; otherwise it passes the
// answer on and arms d again.
func (p *FaultProxy) dropResponse(w http.ResponseWriter, r *http.Request, call *Call, body []byte, d *Drop) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = p.upstream.Scheme, p.upstream.Host
	out.Host, out.RequestURI = "", ""
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := p.transport.RoundTrip(out)
	var answer []byte
	if err == nil {
		answer, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	if err != nil || resp.StatusCode/100 != 2 {
		p.mu.Lock()
		p.drops = append(p.drops, d)
		p.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(answer)
		return
	}
	call.Answered, call.Status, call.Dropped = time.Now(), resp.StatusCode, true
	p.recordWrite(call)
	d.call = *call
	close(d.fired)
	// Resets the HTTP/2 stream, or closes the HTTP/1 connection, without
	// an answer.
	panic(http.ErrAbortHandler)
}

// refusingListener closes connections as they are accepted while the
// proxy is cut.
type refusingListener struct {
	net.Listener
	p *FaultProxy
}

func (l *refusingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.p.mu.Lock()
		cut := l.p.cut
		l.p.mu.Unlock()
		if !cut {
			return c, nil
		}
		_ = c.Close()
	}
}
