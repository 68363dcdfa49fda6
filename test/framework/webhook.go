package framework

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/klock-io/klock/webhook/server"
)

// ServeWebhook runs klock-webhook's server where the installed webhook
// configuration sends requests, and returns once it answers TLS. It stops
// when ctx ends; the returned channel then yields its error. configure
// may change the options first.
func (cp *ControlPlane) ServeWebhook(ctx context.Context, klockImage string, configure ...func(*server.Options)) (<-chan error, error) {
	ctrl.SetLogger(logr.Discard()) // the tests read what the webhook does from the API server
	host, port, certDir := cp.WebhookServing()
	o := server.NewOptions()
	o.Port, o.CertDir, o.KlockImage, o.MetricsAddr, o.ProbeAddr = port, certDir, klockImage, "0", "0"
	for _, f := range configure {
		f(o)
	}
	done := make(chan error, 1)
	go func() { done <- server.Run(ctx, o, cp.Config) }()
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	for deadline := time.Now().Add(30 * time.Second); ; {
		// Only checks that it serves; the API server checks the certificate.
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			_ = conn.Close()
			return done, nil
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("the webhook server stopped: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the webhook server did not serve TLS on %s within 30s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MountSecret does what the kubelet does for a Secret volume, until ctx
// ends: it keeps the Secret's keys as files in dir, replaced when the
// Secret changes.
func (cp *ControlPlane) MountSecret(ctx context.Context, ns, name, dir string) {
	for ctx.Err() == nil {
		if secret, err := cp.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			for key, value := range secret.Data {
				path := filepath.Join(dir, key)
				if old, _ := os.ReadFile(path); !bytes.Equal(old, value) {
					if err := os.WriteFile(path+".new", value, 0o600); err == nil {
						_ = os.Rename(path+".new", path)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RunWebhook runs klock-webhook's server with o in this process until the
// test ends, and fails the test if it stopped with an error. With
// mountSecret, the named Secret (namespace/name) is kept in o.CertDir as
// the kubelet would.
func (cp *ControlPlane) RunWebhook(t testing.TB, o *server.Options, mountSecret string) {
	t.Helper()
	cp.RunWebhookAs(t, o, mountSecret, "")
}

// RunWebhookAs is RunWebhook with the webhook's requests made as service
// account serviceAccount (namespace/name), as its pods would make them:
// the test then proves that account's RBAC is enough.
func (cp *ControlPlane) RunWebhookAs(t testing.TB, o *server.Options, mountSecret, serviceAccount string) {
	t.Helper()
	config := rest.CopyConfig(cp.Config)
	if ns, name, ok := strings.Cut(serviceAccount, "/"); ok {
		config.Impersonate = rest.ImpersonationConfig{
			UserName: "system:serviceaccount:" + ns + ":" + name,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	if ns, name, ok := strings.Cut(mountSecret, "/"); ok {
		go cp.MountSecret(ctx, ns, name, o.CertDir)
	}
	done := make(chan error, 1)
	go func() { done <- server.Run(ctx, o, config) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook server: %v", err)
		}
	})
}

// StartWebhook runs klock-webhook's server with o and config in this
// process, and returns a stop that ends it (and is called when the test
// ends). Tests give each replica a config of its own to tell what each
// sends.
func (cp *ControlPlane) StartWebhook(t testing.TB, o *server.Options, config *rest.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Run(ctx, o, config) }()
	return StopWhenDone(t, cancel, done)
}

// StopWhenDone returns a stop for a webhook server that runs until cancel,
// and yields its error on done: it cancels, waits, and fails the test if
// the server stopped with an error. It is called when the test ends too;
// calls after the first do nothing.
func StopWhenDone(t testing.TB, cancel context.CancelFunc, done <-chan error) (stop func()) {
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook server: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}
