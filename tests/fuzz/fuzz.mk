# tests/fuzz/fuzz.mk: the fuzz build's rules (run by tests/fuzz/build.sh, which sets TOP, OUT,
# CC, LIB_SRCS, PKG_CFLAGS, PKG_LIBS). One harness per tests/fuzz/fuzz-NAME.c.
HARNESSES := $(patsubst $(TOP)/tests/fuzz/fuzz-%.c,%,$(wildcard $(TOP)/tests/fuzz/fuzz-*.c))
SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# The library is gcc-clean (-Werror there); clang's own warnings are not errors here. The
# harnesses are built with -Werror.
CFLAGS := -std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter -pthread $(SAN) \
	-I$(OUT) -I$(TOP) $(PKG_CFLAGS) -DPKGLIBEXECDIR='"/nonexistent"'
OBJS := $(patsubst %.c,$(OUT)/obj/%.o,$(LIB_SRCS))

all: $(addprefix $(OUT)/fuzz-,$(HARNESSES))

$(OUT)/obj/%.o: $(TOP)/%.c $(OUT)/config.h
	@mkdir -p $(@D)
	@echo "  CC      $*.c"
	@$(CC) $(CFLAGS) -Wno-gnu-variable-sized-type-not-at-end -fsanitize=fuzzer-no-link \
		-MMD -MP -c -o $@ $<

$(OUT)/libblkmig-fuzz.a: $(OBJS)
	@rm -f $@
	@ar rcs $@ $^

$(OUT)/fuzz-%: $(TOP)/tests/fuzz/fuzz-%.c $(TOP)/tests/fuzz/fuzz.h $(OUT)/libblkmig-fuzz.a
	@echo "  CCLD    fuzz-$*"
	@$(CC) $(CFLAGS) -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
		-fsanitize=fuzzer -MMD -MP -MF $@.d -o $@ $< \
		$(OUT)/libblkmig-fuzz.a $(PKG_LIBS)

-include $(OBJS:.o=.d) $(addsuffix .d,$(addprefix $(OUT)/fuzz-,$(HARNESSES)))
.PHONY: all
