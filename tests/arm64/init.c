/*
 * /init of the arm64 boot test's initramfs (tests/arm64_boot.rs), built with
 * `aarch64-linux-gnu-gcc -static`. It proves user space was reached, reports
 * what the kernel made of the device tree, and powers the machine off
 * (reboot(RB_POWER_OFF) -> PSCI SYSTEM_OFF, which makes QEMU exit).
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#define TAG "hutch-arm64-init: "

/* Prints the first line of `path` after `label`. */
static void show_file(const char *label, const char *path)
{
    char buf[1024] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    printf(TAG "%s: %s\n", label, f ? buf : "(unreadable)");
}

/* Counts the entries of `dir` whose names start with `prefix`. */
static int count_entries(const char *dir, const char *prefix)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

int main(void)
{
    mkdir("/proc", 0555);
    mkdir("/sys", 0555);
    if (mount("proc", "/proc", "proc", 0, NULL) != 0)
        perror(TAG "mount /proc");
    if (mount("sysfs", "/sys", "sysfs", 0, NULL) != 0)
        perror(TAG "mount /sys");

    printf(TAG "user space reached (pid %d)\n", (int)getpid());
    printf(TAG "online cpus: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    show_file("cmdline", "/proc/cmdline");
    show_file("memory", "/proc/meminfo");
    show_file("dt model", "/sys/firmware/devicetree/base/model");
    printf(TAG "dt virtio_mmio nodes: %d\n",
           count_entries("/sys/firmware/devicetree/base", "virtio_mmio@"));
    printf(TAG "dt cpu nodes: %d\n", count_entries("/sys/firmware/devicetree/base/cpus", "cpu@"));

    /* Each virtio device the virtio-mmio transports found: id and DT node. */
    DIR *d = opendir("/sys/bus/virtio/devices");
    struct dirent *e;
    int devices = 0;
    while (d && (e = readdir(d))) {
        char path[512], id[64] = "?", where[512] = "?";
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(id, sizeof id, f))
                strcpy(id, "?");
            fclose(f);
            id[strcspn(id, "\n")] = 0;
        }
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s", e->d_name);
        ssize_t n = readlink(path, where, sizeof where - 1);
        where[n > 0 ? n : 1] = 0;
        printf(TAG "virtio device %s: id %s at %s\n", e->d_name, id, where);
        devices++;
    }
    if (d)
        closedir(d);
    printf(TAG "virtio devices: %d\n", devices);
    printf(TAG "powering off\n");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    perror(TAG "reboot(RB_POWER_OFF)");
    return 1;
}
