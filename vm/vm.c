/* vm.c: helpers over the VM backend interface. */
#include <config.h>

#include <string.h>

#include "vm/vm.h"

uint8_t *vm_gpa_to_host(struct vm *vm, uint64_t gpa)
{
    for (unsigned i = 0; i < vm->nregions; i++) {
        struct vm_ram_region *r = &vm->regions[i];
        if (gpa >= r->gpa && r->size >= VM_PAGE_SIZE && gpa - r->gpa <= r->size - VM_PAGE_SIZE)
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

struct json_object *vm_describe_disks(const struct vm *vm)
{
    struct json_object *d = json_object_new_array();
    for (unsigned k = 0; k < vm->ndisks; k++) {
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "name", json_object_new_string(vm->disks[k].name));
        json_object_object_add(e, "size",
                               json_object_new_int64((int64_t)bm_disk_size(vm->disks[k].disk)));
        json_object_array_add(d, e);
    }
    return d;
}

int vm_pause(struct vm *vm)
{
    return vm->ops->pause(vm);
}

int vm_resume(struct vm *vm)
{
    return vm->ops->resume(vm);
}

void vm_destroy(struct vm *vm)
{
    if (vm)
        vm->ops->destroy(vm);
}

bool vm_disk_name_ok(const char *name)
{
    if (!name) /* a JSON null */
        return false;
    size_t n = strlen(name);
    if (n == 0 || n >= VM_DISK_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}
