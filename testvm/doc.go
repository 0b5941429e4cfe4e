// Package testvm boots bellbuild's artifacts in QEMU (always -accel tcg:
// nested KVM hangs on the machines this project runs on), captures the
// serial console, and waits for lines on it. Tests and `bellbuild run` use
// it; nothing in the bake or serve path imports it.
package testvm
