package klock

import (
	"context"
	"fmt"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// LeaseClient is what klock needs of the Leases of one namespace. The typed
// client-go client satisfies it (clientset.CoordinationV1().Leases(ns)), and
// so does NewLeaseClient's.
type LeaseClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error)
	Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// The scheme knows coordination.k8s.io/v1 only. client-go's typed clients
// register every API group at init, which more than doubles the size of a
// binary that is copied into every pod it wraps.
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	if err := coordinationv1.AddToScheme(scheme); err != nil {
		panic(err) // a programming error, found by every test run
	}
}

// NewLeaseClient returns a LeaseClient for namespace that speaks protobuf
// and links only the coordination.k8s.io/v1 types.
func NewLeaseClient(config *rest.Config, namespace string) (LeaseClient, error) {
	c := rest.CopyConfig(config)
	c.GroupVersion = &coordinationv1.SchemeGroupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = codecs.WithoutConversion()
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	c.Wrap(recordResponseDate)
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("cannot build an API client: %w", err)
	}
	return &leaseClient{rest: rc, namespace: namespace}, nil
}

// NewForConfig is New with a LeaseClient made by NewLeaseClient.
func NewForConfig(config *rest.Config, cfg Config) (*Lock, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	leases, err := NewLeaseClient(config, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	return New(leases, cfg)
}

type leaseClient struct {
	rest      *rest.RESTClient
	namespace string
}

func (c *leaseClient) Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Get().Namespace(c.namespace).Resource("leases").Name(name).
		VersionedParams(&opts, parameterCodec).Do(ctx).Into(out)
	return out, err
}

func (c *leaseClient) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Post().Namespace(c.namespace).Resource("leases").
		VersionedParams(&opts, parameterCodec).Body(lease).Do(ctx).Into(out)
	return out, err
}

func (c *leaseClient) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.rest.Put().Namespace(c.namespace).Resource("leases").Name(lease.Name).
		VersionedParams(&opts, parameterCodec).Body(lease).Do(ctx).Into(out)
	return out, err
}

func (c *leaseClient) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return c.rest.Delete().Namespace(c.namespace).Resource("leases").Name(name).
		Body(&opts).Do(ctx).Error()
}

func (c *leaseClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	req := c.rest.Get().Namespace(c.namespace).Resource("leases").VersionedParams(&opts, parameterCodec)
	if opts.TimeoutSeconds != nil {
		req = req.Timeout(time.Duration(*opts.TimeoutSeconds) * time.Second)
	}
	return req.Watch(ctx)
}

// responseDateKey is the context key under which a caller asks for the Date
// of the API server's response to its request.
type responseDateKey struct{}

// withResponseDate returns a context under which a request through
// NewLeaseClient's client stores the Date header of its response in *date.
// Other LeaseClients leave *date zero, and klock then judges expiry from
// its own observations alone.
func withResponseDate(ctx context.Context, date *time.Time) context.Context {
	return context.WithValue(ctx, responseDateKey{}, date)
}

// recordResponseDate wraps the API client's transport so that the API
// server's clock can be read off its answers, without a request of its own.
func recordResponseDate(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if date, ok := req.Context().Value(responseDateKey{}).(*time.Time); ok && err == nil {
			if t, perr := http.ParseTime(resp.Header.Get("Date")); perr == nil {
				*date = t
			}
		}
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
