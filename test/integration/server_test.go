package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// writeCert writes a self-signed serving certificate for 127.0.0.1 with
// common name cn into dir as tls.crt and tls.key, each replaced at once.
func writeCert(t *testing.T, dir, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{"tls.crt": {Type: "CERTIFICATE", Bytes: der}, "tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// servedName is the common name of the certificate served at addr.
func servedName(addr string) string {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // reads the certificate, trusts nothing
	if err != nil {
		return ""
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The server as klock-webhook runs it: probes, metrics, an admission
// request over HTTPS, and a certificate replaced while it runs.
func TestWebhookServer(t *testing.T) {
	certDir := t.TempDir()
	writeCert(t, certDir, "first")
	o := server.NewOptions()
	o.Port, o.CertDir, o.KlockImage = framework.Port(t), certDir, testKlockImage
	probes, metrics := "127.0.0.1:"+strconv.Itoa(framework.Port(t)), "127.0.0.1:"+strconv.Itoa(framework.Port(t))
	o.ProbeAddr, o.MetricsAddr = probes, metrics
	cp.RunWebhook(t, o, "")
	addr := "127.0.0.1:" + strconv.Itoa(o.Port)

	eventually(t, 30*time.Second, "/readyz to answer 200", func() bool { code, _ := httpGet(t, "http://"+probes+"/readyz"); return code == 200 })
	if code, body := httpGet(t, "http://"+probes+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if got := servedName(addr); got != "first" {
		t.Fatalf("serving certificate %q, want first", got)
	}

	t.Run("an AdmissionReview over HTTPS", func(t *testing.T) {
		raw, _ := json.Marshal(pod("p", map[string]string{wrap.AnnotationLease: "x"}, container("app", "true")))
		review := admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: "1", Operation: admissionv1.Create, Namespace: "ns",
				Kind:     metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Object:   runtime.RawExtension{Raw: raw},
			},
		}
		body, _ := json.Marshal(review)
		// A client that speaks HTTP/2 whenever the server offers it.
		client := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := client.Post("https://"+addr+webhook.PodsPath, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 1 {
			t.Errorf("served %s, want HTTP/1.1 (HTTP/2 is off by default)", resp.Proto)
		}
		var answer admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			t.Fatal(err)
		}
		if answer.Response == nil || !answer.Response.Allowed || answer.Response.PatchType == nil || !strings.Contains(string(answer.Response.Patch), "klock-install") {
			t.Errorf("response %+v, want an allowed JSON patch adding klock-install", answer.Response)
		}
		_, m := httpGet(t, "http://"+metrics+"/metrics")
		if want := `klock_webhook_admissions_total{kind="Pod",outcome="wrapped"}`; !strings.Contains(m, want) {
			t.Errorf("metrics do not show %s", want)
		}
		if want := fmt.Sprintf("klock_webhook_admission_duration_seconds_count{kind=%q,outcome=%q}", "Pod", "wrapped"); !strings.Contains(m, want) {
			t.Errorf("metrics do not show %s", want)
		}
	})

	t.Run("a replaced certificate is served without a restart", func(t *testing.T) {
		writeCert(t, certDir, "second")
		eventually(t, 30*time.Second, "the new certificate to be served", func() bool { return servedName(addr) == "second" })
	})
}

// With --self-managed-tls the webhook makes its CA and serving certificate,
// keeps them in a Secret, serves them, and puts the CA into the webhook
// configuration, so that the API server trusts it with no cert-manager.
func TestWebhookSelfManagedTLS(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	data, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "deploy", "base", "mutatingwebhookconfiguration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := yaml.Unmarshal(data, mwc); err != nil {
		t.Fatal(err)
	}
	mwc.Name = "klock-self-managed"
	mwcs := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := mwcs.Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mwcs.Delete(ctx, mwc.Name, metav1.DeleteOptions{}) })

	// The Secret exists, empty, as the chart creates it; the webhook fills it.
	if _, err := cp.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "klock-webhook-tls"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Two replicas, as the chart runs them: one rotates, both serve. One
	// runs in this process, the other is the klock-webhook binary.
	dnsName := "klock-webhook." + ns + ".svc"
	o := server.NewOptions()
	o.Port, o.CertDir, o.KlockImage = framework.Port(t), t.TempDir(), testKlockImage
	probes := "127.0.0.1:" + strconv.Itoa(framework.Port(t))
	o.ProbeAddr, o.MetricsAddr = probes, "0"
	o.SelfManagedTLS, o.TLSSecret, o.DNSNames, o.WebhookConfiguration, o.LeaderElect =
		true, ns+"/klock-webhook-tls", []string{dnsName, dnsName + ".cluster.local"}, mwc.Name, true
	cp.RunWebhook(t, o, o.TLSSecret)

	port2, certDir2, probes2 := framework.Port(t), t.TempDir(), "127.0.0.1:"+strconv.Itoa(framework.Port(t))
	mountCtx, stopMount := context.WithCancel(ctx)
	t.Cleanup(stopMount)
	go cp.MountSecret(mountCtx, ns, "klock-webhook-tls", certDir2)
	second := startProcess(t, nil, webhookBin, "--kubeconfig", cp.Kubeconfig, "--klock-image", testKlockImage,
		"--webhook-port", strconv.Itoa(port2), "--webhook-cert-path", certDir2, "--health-probe-bind-address", probes2, "--metrics-bind-address", "0",
		"--self-managed-tls", "--tls-secret", o.TLSSecret, "--dns-names", strings.Join(o.DNSNames, ","), "--webhook-configuration", mwc.Name, "--leader-elect")
	t.Cleanup(func() { _ = second.Process.Signal(syscall.SIGTERM); _ = second.wait(t, 30*time.Second) })
	for _, p := range []string{probes, probes2} {
		eventually(t, 60*time.Second, "/readyz of "+p+" to answer 200", func() bool { code, _ := httpGet(t, "http://"+p+"/readyz"); return code == 200 })
	}

	secret, err := cp.Client.CoreV1().Secrets(ns).Get(ctx, "klock-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := secret.Data["ca.crt"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("the Secret holds no CA: %v", secret.Data)
	}
	eventually(t, 30*time.Second, "the CA in both webhooks of the configuration", func() bool {
		got, err := mwcs.Get(ctx, mwc.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, w := range got.Webhooks {
			if !bytes.Equal(w.ClientConfig.CABundle, ca) {
				return false
			}
		}
		return true
	})
	// What the API server does: verify the served certificate against the
	// caBundle, for the Service's name.
	for _, port := range []int{o.Port, port2} {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port), &tls.Config{RootCAs: pool, ServerName: dnsName})
		if err != nil {
			t.Fatalf("the certificate served on %d does not verify against the injected CA for %s: %v", port, dnsName, err)
		}
		_ = conn.Close()
	}
	if _, err := cp.Client.CoordinationV1().Leases(ns).Get(ctx, "klock-webhook-certs", metav1.GetOptions{}); err != nil {
		t.Errorf("no leader election Lease for the rotation: %v", err)
	}
}
