package deploy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/test/framework"
	"github.com/klock-io/klock/webhook"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/server"
	"github.com/klock-io/klock/webhook/wrap"
)

// keyPair is a certificate and its key, parsed and as PEM.
type keyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// issue makes a certificate: a CA if isCA, else a serving certificate for
// localhost and 127.0.0.1; signed by parent, or self-signed if nil.
func issue(t *testing.T, cn string, isCA bool, parent *keyPair) *keyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	} else {
		tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &keyPair{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
}

// mountTLS does what the kubelet does when the Secret of a mounted volume
// changes: the new files go into a new directory, which the ..data link
// is swapped to at once; tls.crt and tls.key link through ..data.
func mountTLS(t *testing.T, dir string, kp *keyPair) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..ts-")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": kp.certPEM, "tls.key": kp.keyPEM} {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
}

// served is the serial number of the certificate served at addr.
func served(addr string) string {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // reads the certificate, trusts nothing
	if err != nil {
		return ""
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// chartWebhooks are the entries of the chart's default webhook
// configuration, by name.
func chartWebhooks(t *testing.T) map[string]admissionregistrationv1.MutatingWebhook {
	t.Helper()
	objs, err := helmTemplate(t, "klock-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(objs, "MutatingWebhookConfiguration", "klock").Object, &mwc); err != nil {
		t.Fatal(err)
	}
	hooks := map[string]admissionregistrationv1.MutatingWebhook{}
	for _, w := range mwc.Webhooks {
		hooks[w.Name] = w
	}
	return hooks
}

func createConfiguration(t *testing.T, mwc *admissionregistrationv1.MutatingWebhookConfiguration) {
	t.Helper()
	ctx := context.Background()
	mwcs := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := mwcs.Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mwcs.Delete(ctx, mwc.Name, metav1.DeleteOptions{}) })
}

func newNamespace(t *testing.T, prefix string, labels map[string]string) string {
	t.Helper()
	ns, err := cp.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// With the chart's webhook configuration, and an entry the policy
// controller makes from it for a ClusterLockPolicy that selects every
// namespace, the API server sends no pod of the system namespaces nor of
// namespaces labelled klock.io/exclude=true: they are admitted while the
// webhook is unreachable (as while cert-manager, which issues its
// certificate, starts), and other pods are refused.
func TestExcludedNamespacesNeverReachTheWebhook(t *testing.T) {
	ctx := context.Background()
	hooks := chartWebhooks(t)
	pods := hooks[policy.PodsWebhook]
	// Nothing listens here: every call fails, and failurePolicy Fail
	// refuses the pod.
	pods.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:" + strconv.Itoa(framework.Port(t)) + webhook.PodsPath), CABundle: issue(t, "ca", true, nil).certPEM}
	// Only this test's pods, so that other tests' are not refused.
	everything := &klockv1alpha1.ClusterLockPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "everything", Generation: 1},
		Spec:       klockv1alpha1.ClusterLockPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"klock-test": "exclusion"}}},
	}
	entry := policy.PolicyWebhook(&pods, everything)
	pods.ObjectSelector = everything.Spec.Selector
	createConfiguration(t, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "klock-exclusion-test"},
		Webhooks:   []admissionregistrationv1.MutatingWebhook{pods, entry},
	})

	labelled := newNamespace(t, "excluded-", map[string]string{"klock.io/exclude": "true"})
	plain := newNamespace(t, "served-", nil)
	create := func(ns string, annotations map[string]string) error {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "p-", Labels: map[string]string{"klock-test": "exclusion"}, Annotations: annotations},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"true"}}}},
		}
		_, err := cp.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	annotated := map[string]string{wrap.AnnotationLease: "x"}
	// The configuration takes effect within a moment.
	framework.Eventually(t, 30*time.Second, "a served namespace's pod to be refused", func() bool { return create(plain, nil) != nil })
	if err := create(plain, annotated); err == nil {
		t.Error("an annotated pod was admitted without the webhook")
	}
	for _, ns := range []string{labelled, "kube-system", "kube-node-lease", "kube-public"} {
		for _, a := range []map[string]string{nil, annotated} {
			if err := create(ns, a); err != nil {
				t.Errorf("a pod in %s (annotations %v) was sent to the webhook: %v", ns, a, err)
			}
		}
	}
}

// Renewing the serving certificate under cert-manager's CA chain refuses
// no admission: the webhook configuration trusts the CA, which signs the
// old certificate and the new one, so it does not matter which one a
// replica serves while the kubelet updates its mounted Secret. Under the
// former scheme, a self-signed serving certificate that was its own CA,
// cainjector's new CA refuses the old certificate until then: that is
// shown first.
func TestCertificateRenewalRefusesNoAdmission(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, "renewal-", nil)
	certDir := t.TempDir()
	first := issue(t, "klock-webhook", false, nil)
	mountTLS(t, certDir, first)
	o := server.NewOptions()
	o.Port, o.CertDir, o.KlockImage, o.MetricsAddr, o.ProbeAddr = framework.Port(t), certDir, "ghcr.io/klock-io/klock:test", "0", "0"
	o.Policies = false
	cp.RunWebhook(t, o, "")
	addr := "127.0.0.1:" + strconv.Itoa(o.Port)

	// The chart's pods entry, called at a URL and for this test's namespace.
	pods := chartWebhooks(t)[policy.PodsWebhook]
	pods.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "klock-renewal-test"}, Webhooks: []admissionregistrationv1.MutatingWebhook{pods}}
	// configure is what cainjector does: the CA into the configuration;
	// and host, localhost or 127.0.0.1, makes the API server open new
	// connections to the webhook, as a new API server or webhook replica
	// would, so that it verifies the certificate served then.
	configure := func(ca []byte, host string) {
		t.Helper()
		mwc.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://" + host + ":" + strconv.Itoa(o.Port) + webhook.PodsPath), CABundle: ca}
		mwcs := cp.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
		if mwc.ResourceVersion == "" {
			createConfiguration(t, mwc)
			got, err := mwcs.Get(ctx, mwc.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mwc = got
			return
		}
		got, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mwc = got
	}
	// The pods' service account may not hold Leases: no warning about it.
	quiet := rest.CopyConfig(cp.Config)
	quiet.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(quiet)
	if err != nil {
		t.Fatal(err)
	}
	createPod := func() error {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "p-", Annotations: map[string]string{wrap.AnnotationLease: "renewal"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox:1", Command: []string{"true"}}}},
		}
		got, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && got.Annotations[wrap.AnnotationInjected] == "" {
			t.Errorf("pod %s admitted unwrapped", got.Name)
		}
		return err
	}
	waitServed := func(kp *keyPair) {
		t.Helper()
		framework.Eventually(t, 30*time.Second, "the webhook to serve "+kp.cert.Subject.CommonName, func() bool { return served(addr) == kp.cert.SerialNumber.String() })
	}

	// The former scheme: the serving certificate is its own CA.
	configure(first.certPEM, "localhost")
	framework.Eventually(t, 30*time.Second, "a pod admitted through the webhook", func() bool { return createPod() == nil })
	renewed := issue(t, "klock-webhook", false, nil)
	configure(renewed.certPEM, "localhost") // cainjector is quick, the kubelet is not
	var refused error
	framework.Eventually(t, 30*time.Second, "the old certificate refused under the old scheme", func() bool { refused = createPod(); return refused != nil })
	if !strings.Contains(refused.Error(), "x509") {
		t.Errorf("refused for %v, want a certificate the API server does not trust", refused)
	}
	mountTLS(t, certDir, renewed) // the kubelet catches up
	framework.Eventually(t, 30*time.Second, "pods admitted once the new certificate is served", func() bool { return createPod() == nil })

	// cert-manager's CA chain.
	ca := issue(t, "klock-webhook-ca", true, nil)
	leaf := issue(t, "klock-webhook", false, ca)
	mountTLS(t, certDir, leaf)
	waitServed(leaf)
	configure(ca.certPEM, "localhost")
	framework.Eventually(t, 30*time.Second, "a pod admitted under the CA", func() bool { return createPod() == nil })

	// Pods created without a pause, by a few clients at once, across the
	// renewal; each phase counts those admitted in it.
	var (
		phase    atomic.Int32
		admitted [3]atomic.Int32
		mu       sync.Mutex
		errs     []error
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				if err := createPod(); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				} else {
					admitted[p].Add(1)
				}
			}
		})
	}
	settle := func() {
		t.Helper()
		n := admitted[phase.Load()].Load()
		framework.Eventually(t, 30*time.Second, "pods admitted in this phase", func() bool { return admitted[phase.Load()].Load() >= n+20 })
	}
	settle()
	// cert-manager renews: a new key and certificate from the same CA;
	// cainjector puts the Secret's ca.crt, the same CA, into the
	// configuration; new connections still get the old certificate, the
	// kubelet not having updated the files yet.
	renewedLeaf := issue(t, "klock-webhook", false, ca)
	phase.Store(1)
	configure(ca.certPEM, "127.0.0.1")
	settle()
	// The kubelet updates the files; new connections get the new one.
	mountTLS(t, certDir, renewedLeaf)
	waitServed(renewedLeaf)
	phase.Store(2)
	configure(ca.certPEM, "localhost")
	settle()
	close(stop)
	wg.Wait()
	for _, err := range errs {
		t.Errorf("refused during the renewal: %v", err)
	}
	t.Logf("admitted %d before the renewal, %d with the old certificate after it, %d with the new one", admitted[0].Load(), admitted[1].Load(), admitted[2].Load())
}
