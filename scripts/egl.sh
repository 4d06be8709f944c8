# Sourced by test.sh: Mesa's EGL, through which slicer-core renders Slicer's slice and 3D views offscreen.
# Installed with apt where it is missing and this user may install packages; otherwise the view tests check what
# they can without OpenGL and say so. Where EGL is here, SEGSHAP_REQUIRE_EGL=1 makes those tests fail instead.
egl_present() { ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa\.so'; }
if ! egl_present && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(false); fi
  egl_install() {
    "${as_root[@]}" apt-get install -y --no-install-recommends libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  }
  echo "Installing Mesa's EGL (libegl1 libegl-mesa0 libgl1-mesa-dri) for the rendered-view tests" >&2
  egl_install || { "${as_root[@]}" apt-get update >/dev/null && egl_install; } \
    || echo "Could not install Mesa's EGL; the rendered-view tests will check pixels without OpenGL." >&2
fi
if egl_present; then export SEGSHAP_REQUIRE_EGL=1; fi
