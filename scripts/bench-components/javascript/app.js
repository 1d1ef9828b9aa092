addEventListener('fetch', (event) =>
  event.respondWith(new Response('hello from javascript\n', { headers: { 'content-type': 'text/plain' } })));
