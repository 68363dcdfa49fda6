package framework

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/klock-io/klock/webhook"
)

// ServeWebhook runs klock-webhook's server where the installed webhook
// configuration sends requests, and returns once it answers TLS. It stops
// when ctx ends; the returned channel then yields its error.
func (cp *ControlPlane) ServeWebhook(ctx context.Context, klockImage string) (<-chan error, error) {
	ctrl.SetLogger(logr.Discard()) // the tests read what the webhook does from the API server
	host, port, certDir := cp.WebhookServing()
	o := webhook.NewServerOptions()
	o.Port, o.CertDir, o.KlockImage, o.MetricsAddr, o.ProbeAddr = port, certDir, klockImage, "0", "0"
	done := make(chan error, 1)
	go func() { done <- webhook.Run(ctx, o, cp.Config) }()
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
