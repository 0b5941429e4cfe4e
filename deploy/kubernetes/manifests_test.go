// Package kubernetes holds no code: its test checks the manifests in this
// directory by decoding them strictly into the Kubernetes API types (an
// unknown or misspelt field fails), asserts the settings the day-2
// applier depends on, runs the DaemonSet's command with the real applier
// against a kubelet-style ConfigMap volume, and feeds the example
// ConfigMap to the real applier.
package kubernetes

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/testvm/testtool"
)

const namespace = "bellbuild-system"

// strict decodes a one-object manifest into v as the API server does:
// field names are case sensitive, and unknown fields and duplicate keys
// are errors. (sigs.k8s.io/yaml's UnmarshalStrict alone is not enough: it
// goes through encoding/json, which accepts "hostPid" for hostPID.)
func strict(b []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func decode(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := strict(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestStrictDecodeRejectsTypos(t *testing.T) {
	// The check itself must be able to fail.
	for _, tc := range []struct{ name, doc, msg string }{
		{"case", "spec:\n  template:\n    spec:\n      hostPid: true\n", `unknown field "spec.template.spec.hostPid"`},
		{"unknown", "spec:\n  template:\n    spec:\n      hostPIDs: true\n", `unknown field "spec.template.spec.hostPIDs"`},
		{"duplicate", "metadata:\n  name: a\n  name: b\n", `key "name" already set in map`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds appsv1.DaemonSet
			err := strict([]byte("apiVersion: apps/v1\nkind: DaemonSet\n"+tc.doc), &ds)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want one with %q", err, tc.msg)
			}
		})
	}
}

func TestManifests(t *testing.T) {
	var (
		ns  corev1.Namespace
		sa  corev1.ServiceAccount
		cm  corev1.ConfigMap
		ds  appsv1.DaemonSet
		all = []struct {
			file       string
			obj        any
			kind, apiV string
			meta       func() (string, string)
		}{
			{"namespace.yaml", &ns, "Namespace", "v1", func() (string, string) { return ns.Name, ns.Namespace }},
			{"serviceaccount.yaml", &sa, "ServiceAccount", "v1", func() (string, string) { return sa.Name, sa.Namespace }},
			{"configmap.yaml", &cm, "ConfigMap", "v1", func() (string, string) { return cm.Name, cm.Namespace }},
			{"daemonset.yaml", &ds, "DaemonSet", "apps/v1", func() (string, string) { return ds.Name, ds.Namespace }},
		}
	)
	for _, m := range all {
		decode(t, m.file, m.obj)
	}
	type id struct{ Kind, APIVersion, Name, Namespace string }
	var got, want []id
	for _, m := range all {
		var tm struct{ Kind, APIVersion string }
		b, _ := os.ReadFile(m.file)
		if err := yaml.Unmarshal(b, &tm); err != nil {
			t.Fatal(err)
		}
		name, nsName := m.meta()
		got = append(got, id{tm.Kind, tm.APIVersion, name, nsName})
	}
	want = []id{
		{"Namespace", "v1", namespace, ""},
		{"ServiceAccount", "v1", "bellbuild-apply", namespace},
		{"ConfigMap", "v1", "bellbuild-config", namespace},
		{"DaemonSet", "apps/v1", "bellbuild-apply", namespace},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("objects (-want +got):\n%s", d)
	}

	spec := ds.Spec.Template.Spec
	if d := cmp.Diff(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels); d != "" {
		t.Errorf("the selector does not match the pod labels:\n%s", d)
	}
	if !spec.HostPID || !spec.HostNetwork {
		t.Errorf("hostPID=%t hostNetwork=%t: the applier must see the host's processes and network", spec.HostPID, spec.HostNetwork)
	}
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, sa.Name)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v: want one that tolerates every taint", spec.Tolerations)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the container is not privileged")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s uses undeclared volume %q", m.MountPath, m.Name)
		}
	}
	host, ok := mounts["/host"]
	if !ok {
		t.Fatal("nothing mounted at /host")
	}
	if hp := volumes[host.Name].HostPath; hp == nil || hp.Path != "/" {
		t.Errorf("/host is %+v, want the host's / (hostPath)", volumes[host.Name].VolumeSource)
	}
	if host.ReadOnly {
		t.Error("/host is read-only: the applier writes the host's files")
	}
	conf, ok := mounts["/etc/bellbuild/config"]
	if !ok {
		t.Fatal("nothing mounted at /etc/bellbuild/config")
	}
	if cmv := volumes[conf.Name].ConfigMap; cmv == nil || cmv.Name != cm.Name {
		t.Errorf("/etc/bellbuild/config is %+v, want ConfigMap %s", volumes[conf.Name].VolumeSource, cm.Name)
	}
	cmdline := strings.Join(append(c.Command, c.Args...), " ")
	for _, want := range []string{"bellbuild apply ", "--config /etc/bellbuild/config/node.json", "--root /host", "--live", "--watch"} {
		if !strings.Contains(cmdline, want) {
			t.Errorf("the command lacks %q:\n%s", want, cmdline)
		}
	}

	// The example configuration is a node in the schema the applier reads,
	// whose checksum verifies, byte for byte what `bellbuild render -o
	// json` writes.
	n, _, err := nodeconf.Decode([]byte(cm.Data["node.json"]))
	if err != nil || n == nil {
		t.Fatalf("configmap.yaml node.json: %v", err)
	}
	if n.Conf.Sysctl["vm.swappiness"] != "10" {
		t.Errorf("example sysctl = %v", n.Conf.Sysctl)
	}
	if again, err := nodeconf.Marshal(n, nodeconf.JSON); err != nil || string(again) != cm.Data["node.json"] {
		t.Errorf("configmap.yaml node.json is not as rendered (%v):\n%s", err, again)
	}
}

// containerCommand returns the DaemonSet container's command and args.
func containerCommand(t *testing.T) []string {
	t.Helper()
	var ds appsv1.DaemonSet
	decode(t, "daemonset.yaml", &ds)
	c := ds.Spec.Template.Spec.Containers[0]
	return append(slices.Clone(c.Command), c.Args...)
}

// configMapDir writes files as the kubelet lays out a ConfigMap volume: a
// timestamped directory, the ..data link to it, and one link per key
// through ..data. Called again, it swaps in a new version atomically (a
// new directory, ..data renamed over) and removes the old one.
func configMapDir(t *testing.T, dir, version string, files map[string]string) {
	t.Helper()
	ts := "..2026_11_23_" + version
	if err := os.MkdirAll(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for k := range files {
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDaemonSetCommand runs the DaemonSet container's command — the real
// bellbuild, its paths moved into a temporary directory, its intervals
// shortened — on a host root, with the ConfigMap laid out and updated as
// the kubelet does it: the first version is applied at start, a new one
// when the kubelet swaps it in, a failing run is retried without any
// change until it succeeds, and drift (a managed file's mode) is undone by
// the resync.
func TestDaemonSetCommand(t *testing.T) {
	args := containerCommand(t)
	if len(args) == 0 || filepath.Base(args[0]) != "bellbuild" {
		t.Fatalf("command %q: want bellbuild", args)
	}
	dir := t.TempDir()
	config, host := filepath.Join(dir, "config"), filepath.Join(dir, "host")
	for _, d := range []string{config, filepath.Join(host, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args[0] = testtool.Binary(t)
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "/etc/bellbuild/config/"):
			args[i] = filepath.Join(config, strings.TrimPrefix(a, "/etc/bellbuild/config/"))
		case a == "/host":
			args[i] = host
		case i > 0 && args[i-1] == "--interval":
			args[i] = "50ms"
		case i > 0 && args[i-1] == "--resync":
			args[i] = "2s"
		}
		// --live stays: the test's configuration is files only, so
		// nothing of this machine's kernel is touched either way.
	}
	node := func(motd string) string {
		b, err := nodeconf.Marshal(&nodeconf.Node{Node: "n1", Profile: "k8s", Conf: nodeconf.Conf{
			Files: map[string]nodeconf.File{"/etc/motd": {Content: motd, Mode: "0644"}},
		}}, nodeconf.JSON)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	configMapDir(t, config, "v1", map[string]string{"node.json": node("v1\n")})

	cmd := exec.Command(args[0], args[1:]...)
	stdout, stderr := outputFile(t, dir, "stdout"), outputFile(t, dir, "stderr")
	cmd.Stdout, cmd.Stderr = stdout.f, stderr.f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	motd := filepath.Join(host, "etc/motd")
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s\nstdout:\n%s\nstderr:\n%s", what, stdout.String(), stderr.String())
			}
		}
	}
	content := func(want string) func() bool {
		return func() bool { b, _ := os.ReadFile(motd); return string(b) == want }
	}
	waitFor("the first version applied", content("v1\n"))

	// The kubelet swaps in v2, which cannot be applied yet: /etc on the
	// host is read-only to it (a file where the directory should be).
	etc := filepath.Join(host, "etc")
	if err := os.Rename(etc, etc+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(etc, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	configMapDir(t, config, "v2", map[string]string{"node.json": node("v2\n")})
	waitFor("a failed run and a retry", func() bool { return strings.Count(stderr.String(), "watch: retrying in") >= 2 })
	// Fixed on the host, not in the configuration: the next retry applies.
	if err := os.Remove(etc); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(etc+".away", etc); err != nil {
		t.Fatal(err)
	}
	waitFor("the retry to apply v2", content("v2\n"))

	// Drift: someone changes the managed file's mode; the resync, with
	// the ConfigMap unchanged, puts it back.
	if err := os.Chmod(motd, 0o666); err != nil {
		t.Fatal(err)
	}
	waitFor("the resync to undo the drift", func() bool {
		fi, err := os.Stat(motd)
		return err == nil && fi.Mode().Perm() == 0o644
	})
	if n := strings.Count(stdout.String(), "bellbuild: node=n1 profile=k8s "); n < 3 {
		t.Errorf("%d summary lines, want at least 3 (v1, v2, the resync):\n%s", n, stdout.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
	}
}

// output is a file a process writes to while the test reads it.
type output struct{ f *os.File }

func outputFile(t *testing.T, dir, name string) output {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return output{f}
}

func (o output) String() string {
	b, _ := os.ReadFile(o.f.Name())
	return string(b)
}

// TestConfigMapAccepted feeds the example node.json to the real applier,
// planning against an empty root: it must validate.
func TestConfigMapAccepted(t *testing.T) {
	var cm corev1.ConfigMap
	decode(t, "configmap.yaml", &cm)
	dir := t.TempDir()
	config := filepath.Join(dir, "node.json")
	if err := os.WriteFile(config, []byte(cm.Data["node.json"]), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testtool.Binary(t), "apply", "--config", config, "--root", root, "--offline", "--plan").CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) {
		t.Fatalf("bellbuild apply --plan rejects the example: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "limits") {
		t.Errorf("the plan does not mention the example's limits:\n%s", out)
	}
}

// TestKustomization checks that kustomization.yaml lists every manifest
// (and nothing else) and names the DaemonSet's image.
func TestKustomization(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	decode(t, "kustomization.yaml", &k)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("apiVersion %q kind %q", k.APIVersion, k.Kind)
	}
	manifests, _ := filepath.Glob("*.yaml")
	var want []string
	for _, m := range manifests {
		if m != "kustomization.yaml" {
			want = append(want, m)
		}
	}
	got := append([]string(nil), k.Resources...)
	sort.Strings(got)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("resources (-manifests in the directory +listed):\n%s", d)
	}
	var ds appsv1.DaemonSet
	decode(t, "daemonset.yaml", &ds)
	image, _, _ := strings.Cut(ds.Spec.Template.Spec.Containers[0].Image, ":")
	if len(k.Images) != 1 || k.Images[0].Name != image {
		t.Errorf("images %+v do not name the DaemonSet's image %q", k.Images, image)
	}
}
