const response = await fetch('/api/my-endpoint', {
    method: 'POST',
    body: JSON.stringify({ prompt: "Hello" })
});

const reader = response.body?.getReader();
const decoder = new TextDecoder();
let buffer = '';

while (true) {
    const { done, value } = await reader.read();
    if (done) break;

    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split('\n');
    buffer = lines.pop() || '';

    for (const line of lines) {
        if (line.startsWith('data: ')) {
            const data = JSON.parse(line.slice(6));
            switch (data.type) {
                case 'content':
                    // append to what is shown
                    setText(prev => prev + data.data);
                    break;
                case 'done':
                    console.log('Stream completed');
                    break;
                case 'error':
                    console.error('Server error:', data.error);
                    break;
            }
        }
    }
}
